"""Layer pruning keeps exactly the chosen layers' computation."""

import numpy as np
import pytest
import torch

from mdistill.encode import encode_batch, load_sentence_transformer
from mdistill.models.prune_layers import prune_layers
from mdistill.models.split import mean_pool, run_layers

from conftest import make_tiny_model


def test_pruned_model_runs_exactly_the_kept_layers(tmp_path, pairs):
    src = make_tiny_model(tmp_path / "src", list(pairs.en) + list(pairs.text), layers=4)
    info = prune_layers(src, [0, 2], tmp_path / "pruned")
    assert (info["layers_before"], info["layers_after"]) == (4, 2) and info["params_after"] < info["params_before"]

    texts = list(pairs.en[:20])
    pruned = load_sentence_transformer(str(tmp_path / "pruned"), device="cpu")
    assert pruned[0].auto_model.config.num_hidden_layers == 2
    full = load_sentence_transformer(str(src), device="cpu")
    bert = full[0].auto_model
    with torch.inference_mode():
        f = full.preprocess(texts)
        h = bert.embeddings(input_ids=f["input_ids"], token_type_ids=f.get("token_type_ids"))
        h = run_layers(bert, h, f["attention_mask"], [bert.encoder.layer[0], bert.encoder.layer[2]])
        want = torch.nn.functional.normalize(mean_pool(h, f["attention_mask"]), dim=-1).numpy()
    assert np.abs(encode_batch(pruned, texts, prompt="") - want).max() < 1e-5


def test_prune_refuses_bad_indices(tmp_path, pairs):
    src = make_tiny_model(tmp_path / "src", list(pairs.en), layers=2)
    with pytest.raises(ValueError, match="distinct layer indices"):
        prune_layers(src, [0, 5], tmp_path / "x")


def test_cli_prune_layers(tmp_path, pairs):
    from typer.testing import CliRunner

    from mdistill.cli import app

    src = make_tiny_model(tmp_path / "src", list(pairs.en), layers=3)
    r = CliRunner().invoke(app, ["prune-layers", str(src), str(tmp_path / "out"), "--keep", "0,2"])
    assert r.exit_code == 0, r.output
    assert "layers 3 -> 2" in r.output
