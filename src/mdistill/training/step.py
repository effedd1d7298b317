"""Training kernels without Ray: length-bucketed batches, the LR schedule and one optimizer step."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch

from mdistill.models.split import pad_states
from mdistill.teacher.cache import embedding_matrix


def decode_states(table: pa.Table) -> list[np.ndarray]:
    """``hidden`` (float16 bytes) + ``length`` + ``dim`` columns -> [tokens, dim] arrays."""
    dim = table.column("dim")[0].as_py()
    return [
        np.frombuffer(b, dtype=np.float16).reshape(n, dim)
        for b, n in zip(table.column("hidden").to_pylist(), table.column("length").to_pylist())
    ]


def bucketed_batches(
    chunks: Iterable[pa.Table], batch_size: int, rng: random.Random
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Within each chunk, sort rows by length, cut into batches, shuffle the batch order.

    Batches then pad little while memory stays bounded by one chunk. Every worker sees chunks of
    the same sizes (an equal split), so every worker takes the same number of steps.
    """
    for chunk in chunks:
        states = decode_states(chunk)
        targets = torch.tensor(embedding_matrix(chunk.column("target")))  # a copy: Arrow memory is read-only
        order = sorted(range(len(states)), key=lambda i: (states[i].shape[0], rng.random()))
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        rng.shuffle(batches)
        for b in batches:
            x, m = pad_states([states[i] for i in b])
            yield x, m, targets[b]


def steps_per_epoch(rows: int, batch_size: int, chunk_rows: int) -> int:
    full, rem = divmod(rows, chunk_rows)
    return full * math.ceil(chunk_rows / batch_size) + math.ceil(rem / batch_size)


def warmup_linear(total_steps: int, warmup_ratio: float):
    warm = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return factor


def train_step(model, loss_fn, optimizer, scheduler, batch, max_grad_norm: float) -> float:
    x, m, y = batch
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x, m), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    optimizer.step()
    scheduler.step()
    return float(loss.detach())
