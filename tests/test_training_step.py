import random

import numpy as np
import pyarrow as pa
import pytest
import torch

from mdistill.losses import MSELoss
from mdistill.teacher.cache import embeddings_table
from mdistill.training.step import bucketed_batches, decode_states, steps_per_epoch, train_step, warmup_linear


def _chunk(n: int, dim: int = 8, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    states = [rng.normal(size=(int(rng.integers(2, 12)), dim)).astype(np.float16) for _ in range(n)]
    target = embeddings_table([""] * n, rng.normal(size=(n, dim)).astype(np.float32)).column("embedding")
    return pa.table({"hidden": [s.tobytes() for s in states], "length": [len(s) for s in states], "dim": [dim] * n, "target": target})


def test_bucketed_batches_cover_every_row_once_and_pad_little():
    chunk = _chunk(100)
    seen = 0
    for x, m, y in bucketed_batches([chunk], 16, random.Random(0)):
        lengths = m.sum(1)
        assert lengths.max() - lengths.min() <= 3  # sorted by length within the chunk
        seen += len(x)
        assert len(y) == len(x)
    assert seen == 100
    assert len(decode_states(chunk)) == 100


def test_steps_per_epoch_matches_bucketing():
    chunks = [_chunk(64), _chunk(64, seed=1), _chunk(10, seed=2)]
    n = sum(1 for _ in bucketed_batches(chunks, 16, random.Random(0)))
    assert n == steps_per_epoch(138, 16, 64)


def test_warmup_then_linear_decay():
    f = warmup_linear(100, 0.1)
    assert f(0) == 0.1 and f(9) == 1.0
    assert f(55) == 0.5 and f(100) == 0.0


class Unmasked(torch.nn.Module):
    """A plain module called as the students are: ``model(x, mask)``."""

    def __init__(self, m: torch.nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x, mask):
        return self.m(x)


def test_train_step_reduces_loss():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    x, y = torch.randn(32, 8), torch.randn(32, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    losses = [train_step(Unmasked(model), MSELoss(), opt, sched, (x, None, y), 1.0) for _ in range(50)]
    assert losses[-1] < losses[0] * 0.8


def test_a_bf16_model_trains_on_cast_inputs(tiny_models, pairs):
    """DeepSpeed with bf16 (the GPU configuration) casts the model to bf16 while the batches hold
    float32 states: ``to_device(batch, device, dtype)`` casts the float inputs, the loss is taken
    in float32 on the float32 targets. Pinned on CPU, where bf16 matmuls run too."""
    import pytest

    from mdistill.encode import load_sentence_transformer
    from mdistill.models.split import TopStudent, bottom_states, pad_states
    from mdistill.training.step import to_device

    st = load_sentence_transformer(str(tiny_models["student"]), device="cpu")
    states, pooled = bottom_states(st, list(pairs.text[:16]), 2, prompt="query: ")
    x, m = pad_states(states)
    y = torch.nn.functional.normalize(torch.tensor(pooled), dim=-1)
    top = TopStudent(st, 1, dense=torch.nn.Linear(32, 32)).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="dtype|type"):
        top(x, m)  # what the GPU run would have hit: float32 inputs into bf16 weights
    bx, bm, by = to_device((x, m, y), "cpu", torch.bfloat16)
    assert bx.dtype == torch.bfloat16 and bm.dtype == torch.long and by.dtype == torch.float32
    loss = MSELoss()(top(bx, bm).float(), by)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and torch.isfinite(p.grad).all() for p in top.parameters())


def test_contrastive_term_through_train_step_ranks_each_row_on_its_own_target():
    """mse+contrastive through the training path: the step's loss is MSE + the hand-computed
    InfoNCE of the first batch, and training makes every row's nearest target its own (siblings:
    rows 2k and 2k+1 share a source)."""
    from mdistill.losses import TeacherContrastiveLoss

    torch.manual_seed(0)
    model = torch.nn.Linear(32, 8)  # 32 inputs in 32 dimensions: a linear map can rank them all
    x = torch.randn(32, 32)
    y = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1).repeat_interleave(2, dim=0)

    with torch.no_grad():
        s = model(x)
        cos = torch.nn.functional.normalize(s, dim=-1) @ y[::2].T  # the 16 distinct targets
        by_hand = torch.nn.functional.cross_entropy(cos / 0.1, torch.arange(32) // 2) + ((s - y) ** 2).mean()
    loss_fn = TeacherContrastiveLoss(MSELoss(), temperature=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    first = train_step(Unmasked(model), loss_fn, opt, sched, (x, None, y), 1.0)
    assert first == pytest.approx(by_hand.item(), rel=1e-5)
    for _ in range(200):
        train_step(Unmasked(model), loss_fn, opt, sched, (x, None, y), 1.0)
    with torch.no_grad():
        nearest = (torch.nn.functional.normalize(model(x), dim=-1) @ y[::2].T).argmax(1)
    assert (nearest == torch.arange(32) // 2).float().mean() == 1.0
