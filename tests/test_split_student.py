"""The split student (cached bottom + trained top) equals the exported sentence-transformers model."""

import numpy as np
import torch

from mdistill.encode import encode_batch, load_sentence_transformer
from mdistill.export import export_student
from mdistill.models.split import TopStudent, bottom_states, lstsq_dense, pad_states


def test_top_of_cached_bottom_equals_full_forward(tiny_models, pairs):
    st = load_sentence_transformer(str(tiny_models["student"]), device="cpu")
    texts = list(pairs.text[:20])
    states, pooled = bottom_states(st, texts, frozen_layers=2, prompt="query: ", batch_size=8)
    top = TopStudent(st, train_layers=1).eval()
    with torch.no_grad():
        e = top(*pad_states(states)).numpy()
    ref = st.encode(texts)  # applies the model's default prompt "query: "
    assert np.abs(e - ref).max() < 1e-3  # float16 cache of the bottom
    np.testing.assert_allclose(pooled / np.linalg.norm(pooled, axis=1, keepdims=True), ref, atol=1e-5)


def test_export_with_dense_matches_our_forward(tiny_models, pairs, tmp_path):
    st = load_sentence_transformer(str(tiny_models["student"]), device="cpu")
    texts = list(pairs.en[:120])
    states, _ = bottom_states(st, texts, frozen_layers=1, prompt="query: ")
    torch.manual_seed(0)
    top = TopStudent(st, train_layers=2, dense=torch.nn.Linear(32, 48)).eval()  # a head that changes the dimension
    with torch.no_grad():
        ours = top(*pad_states(states)).numpy()
    out = export_student(st, top.dense, tmp_path / "exported", prompt="query: ")
    theirs = load_sentence_transformer(str(out), device="cpu").encode(texts)
    assert theirs.shape == (120, 48)
    assert np.abs(ours - theirs).max() < 1e-3


def test_lstsq_dense_solves_affine_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    w, b = rng.normal(size=(6, 3)), rng.normal(size=3)
    lin = lstsq_dense(x, (x @ w + b).astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(lin(torch.from_numpy(x)).numpy(), x @ w + b, atol=1e-4)


def test_encode_batch_matches_sentence_transformers(tiny_models, pairs):
    st = load_sentence_transformer(str(tiny_models["student"]), device="cpu")
    texts = list(pairs.text[:25])
    np.testing.assert_allclose(encode_batch(st, texts, batch_size=4), st.encode(texts), atol=1e-5)


def test_linear_map_from_block_sums_equals_least_squares_on_every_row():
    """The run fits its linear maps from sums streamed block by block (``fit_linear_maps``): they
    must equal least squares on all rows at once, plain and ridge."""
    from mdistill.models.split import add_sums, gram_sums, lstsq_from_sums

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5)) + 3.0  # a large common component, like pooled vectors
    y = x @ rng.normal(size=(5, 4)) + rng.normal(size=4) + 0.01 * rng.normal(size=(300, 4))
    total = None
    for block in np.array_split(np.arange(300), 7):
        total = add_sums(total, gram_sums(x[block], y[block]))
    lin = lstsq_from_sums(total)
    ref = np.linalg.lstsq(np.hstack([x, np.ones((300, 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(lin.weight.detach().numpy().T, ref[:5], atol=1e-4)
    np.testing.assert_allclose(lin.bias.detach().numpy(), ref[5], atol=1e-4)

    # ridge on the centred data, by hand: (Xc'Xc + r tr/d I) W = Xc'Yc, b = my - mx W
    r = 0.1
    xc, yc = x - x.mean(0), y - y.mean(0)
    gram = xc.T @ xc
    w = np.linalg.solve(gram + r * np.trace(gram) / 5 * np.eye(5), xc.T @ yc)
    ridge = lstsq_from_sums(total, ridge=r)
    np.testing.assert_allclose(ridge.weight.detach().numpy().T, w, atol=1e-4)
    np.testing.assert_allclose(ridge.bias.detach().numpy(), y.mean(0) - x.mean(0) @ w, atol=1e-4)
