"""Training kernels without Ray: length-bucketed batches, the LR schedule, the optimizer, the
DeepSpeed config, one optimizer step and the dev metrics. The Ray Train loop
(``training/loop.py``) strings them together; benchmarks call them directly."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from mdistill.models.split import pad_ids, pad_states
from mdistill.teacher.cache import embedding_matrix


def decode_states(table: pa.Table) -> list[np.ndarray]:
    """``hidden`` (float16 bytes) + ``length`` + ``dim`` columns -> [tokens, dim] arrays."""
    dim = table.column("dim")[0].as_py()
    return [
        np.frombuffer(b, dtype=np.float16).reshape(n, dim)
        for b, n in zip(table.column("hidden").to_pylist(), table.column("length").to_pylist())
    ]


class StateFeatures:
    """Batches of cached frozen-bottom states (``student.train_layers`` = k): padded [batch, tokens, hidden] + mask."""

    def __call__(self, chunk: pa.Table) -> list[np.ndarray]:
        return decode_states(chunk)

    def pad(self, items: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_states(items)


class TextFeatures:
    """Batches of tokenised text (``student.train_layers: all``): padded token ids + mask. The
    prompt is prepended and the text truncated exactly as the exported model's ``encode`` does."""

    def __init__(self, tokenizer, prompt: str, max_seq_length: int):
        self.tokenizer, self.prompt, self.max_seq_length = tokenizer, prompt, max_seq_length
        self.pad_id = tokenizer.pad_token_id or 0

    def __call__(self, chunk: pa.Table) -> list[np.ndarray]:
        texts = [self.prompt + t for t in chunk.column("text").to_pylist()]
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length, add_special_tokens=True)["input_ids"]
        return [np.asarray(x, dtype=np.int64) for x in ids]

    def pad(self, items: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_ids(items, self.pad_id)


def bucketed_batches(
    chunks: Iterable[pa.Table], batch_size: int, rng: random.Random, features=None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Within each chunk, sort rows by length, cut into batches, shuffle the batch order.

    Batches then pad little while memory stays bounded by one chunk. Every worker sees chunks of
    the same sizes (an equal split), so every worker takes the same number of steps.
    ``features``: ``StateFeatures()`` (default) or ``TextFeatures(...)``.
    """
    features = features or StateFeatures()
    for chunk in chunks:
        items = features(chunk)
        targets = torch.tensor(embedding_matrix(chunk.column("target")))  # a copy: Arrow memory is read-only
        order = sorted(range(len(items)), key=lambda i: (items[i].shape[0], rng.random()))
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        rng.shuffle(batches)
        for b in batches:
            x, m = features.pad([items[i] for i in b])
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


def make_optimizer(student, *, lr: float, head_lr: float | None, weight_decay: float, total_steps: int, warmup_ratio: float):
    """AdamW over the trained transformer part (``lr``) and the Dense head (``head_lr``), warm-up +
    linear decay. ``student``: a ``TopStudent`` or a ``FullStudent``.

    A torch optimizer, also under DeepSpeed: a DeepSpeed-config optimizer JIT-compiles
    ``fused_adam`` on first use (~90 s on CPU) for no gain at this size."""
    body = [p for n, p in student.named_parameters() if not n.startswith("dense.") and p.requires_grad]
    groups = [{"params": body, "lr": lr}]
    if student.dense is not None:
        groups.append({"params": list(student.dense.parameters()), "lr": head_lr or lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(total_steps, warmup_ratio))


def deepspeed_config(*, batch_size: int, grad_accum: int, world_size: int, zero_stage: int, max_grad_norm: float, bf16: bool) -> dict:
    """The DeepSpeed config of a run: ZeRO stage, accumulation, clipping, bf16 on GPU (fp32 on CPU)."""
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": batch_size * grad_accum * world_size,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,  # mdistill logs itself
        "wall_clock_breakdown": False,
    }


def to_device(batch: tuple[torch.Tensor, ...], device, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
    """Move a batch; with ``dtype`` (the model's, e.g. bf16 under DeepSpeed) the float *inputs* are
    cast to it. The targets (last) stay float32: the loss is computed in float32."""
    *inputs, y = batch
    moved = [t.to(device, dtype=dtype if dtype is not None and t.is_floating_point() else None, non_blocking=True) for t in inputs]
    return (*moved, y.to(device, non_blocking=True))


def train_step(model, loss_fn, optimizer, scheduler, batch, max_grad_norm: float, *, accum: int = 1, boundary: bool = True) -> float:
    """One micro-batch of plain PyTorch / DDP training; the optimizer steps on ``boundary``.

    With gradient accumulation the loss is divided by ``accum`` so the summed gradient is the
    mean over the accumulated micro-batches (what DeepSpeed does too)."""
    x, m, y = batch
    loss = loss_fn(model(x, m).float(), y)
    (loss / accum).backward()
    if boundary:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def deepspeed_step(engine, loss_fn, batch) -> float:
    """One micro-batch under DeepSpeed: the engine scales for accumulation, clips, and steps the
    optimizer and LR scheduler at accumulation boundaries. With bf16 the engine holds the model in
    bf16: float inputs are cast to it (``to_device``) and the output back to float32 for the loss."""
    x, m, y = batch
    loss = loss_fn(engine(x, m).float(), y)
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


@torch.no_grad()
def embed_rows(
    model, rows: pa.Table, features=None, *, batch_size: int = 128, device="cpu", dtype: torch.dtype | None = None
) -> np.ndarray:
    """The model's vectors (float32, row order) of ``rows`` (states or text columns, as ``features`` reads them)."""
    features = features or StateFeatures()
    was_training = model.training
    model.eval()
    items = features(rows)
    vecs: np.ndarray | None = None
    order = np.argsort([x.shape[0] for x in items], kind="stable")
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        x, m = features.pad([items[i] for i in idx])
        v = model(x.to(device, dtype=dtype if x.is_floating_point() else None), m.to(device)).float().cpu().numpy()
        if vecs is None:
            vecs = np.empty((len(items), v.shape[1]), np.float32)
        vecs[idx] = v
    model.train(was_training)
    return vecs if vecs is not None else np.zeros((0, 0), np.float32)


def pooled_dev_metrics(vectors: np.ndarray, dev: pa.Table, prefix: str = "dev") -> dict[str, float]:
    """The dev metric during training (what Tune ranks on): every language's dev rows pooled
    (``prefix="heldout"``: the same on the out-of-domain rows, ``heldout_pooled_*``).

    ``dev_pooled_teacher_space_top1``: is each translation's nearest teacher vector, among *all*
    dev English sources (one index for every language), its own source's? ``dev_pooled_mse100``:
    MSE x 100 to the teacher over every dev row (English rows included). The per-language numbers
    of the report are computed after training, per language, by ``evaluation.table``."""
    from mdistill.evaluation.MSEEvaluator import MSEEvaluator
    from mdistill.evaluation.TeacherSpaceEvaluator import TeacherSpaceEvaluator

    targets = embedding_matrix(dev.column("target"))
    en, lang = dev.column("en").to_pylist(), dev.column("lang").to_pylist()
    first: dict[str, int] = {}
    for i, e in enumerate(en):
        first.setdefault(e, i)
    index = targets[list(first.values())]  # one teacher vector per English source
    answer = {e: j for j, e in enumerate(first)}
    q = [i for i, lg in enumerate(lang) if lg != "en"]
    top1 = TeacherSpaceEvaluator.compute(vectors[q], index, answers=[answer[en[i]] for i in q])["teacher_space_top1"] if q else float("nan")
    return {f"{prefix}_pooled_teacher_space_top1": top1, f"{prefix}_pooled_mse100": MSEEvaluator.compute(vectors, targets)["mse100"]}
