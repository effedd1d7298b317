import random

import numpy as np
import pyarrow as pa
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


def test_train_step_reduces_loss():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    x, y = torch.randn(32, 8), torch.randn(32, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x, mask):
            return self.m(x)

    losses = [train_step(Wrap(), MSELoss(), opt, sched, (x, None, y), 1.0) for _ in range(50)]
    assert losses[-1] < losses[0] * 0.8
