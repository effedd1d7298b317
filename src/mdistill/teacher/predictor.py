"""Callable classes for Ray Data ``map_batches`` actor pools (they import no Ray).

Each actor loads its model once in ``__init__``; ``__call__`` takes a pyarrow batch with a
``text`` column and returns a pyarrow table, so the Parquet files written from it hold plain
Arrow types that any reader understands.
"""

from __future__ import annotations

import sys

import pyarrow as pa
import torch

from mdistill.encode import encode_batch, load_sentence_transformer
from mdistill.teacher.cache import embeddings_table, text_key


def _threads(n: int | None) -> None:
    if n and not torch.cuda.is_available():
        torch.set_num_threads(n)


NODE = "node"  # the Ray node that computed a row: counted by the pass, never written to the cache


def _node_id() -> str | None:
    """The Ray node this actor runs on; None outside Ray (the kernels run without it, e.g. on a
    GPU machine with no Ray installed), so this module never imports Ray itself."""
    ray = sys.modules.get("ray")
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None


def _tagged(out: pa.Table, node: str | None) -> pa.Table:
    return out if node is None else out.append_column(NODE, pa.array([node] * out.num_rows, pa.string()))


def _keys(batch: pa.Table, texts: list[str]) -> list[str]:
    """The batch's ``key`` column when the caller computed it, else the keys of ``texts``."""
    return batch.column("key").to_pylist() if "key" in batch.column_names else [text_key(t) for t in texts]


class TeacherPredictor:
    """Teacher sentence embeddings keyed by text hash (the cache's shard format)."""

    def __init__(
        self, model: str, max_seq_length: int, batch_size: int, prompt: str = "", dtype: str = "float32", threads: int | None = None
    ):
        _threads(threads)
        self.node = _node_id()
        self.model = load_sentence_transformer(model, max_seq_length=max_seq_length)
        self.batch_size, self.prompt, self.dtype = batch_size, prompt, dtype

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        emb = encode_batch(self.model, texts, batch_size=self.batch_size, prompt=self.prompt)
        return _tagged(embeddings_table(_keys(batch, texts), emb, self.dtype), self.node)


class LogitsPredictor:
    """Raw logits of a sequence-classification teacher (``AutoModelForSequenceClassification``),
    keyed by text hash: columns ``key``, ``logits`` (float32; temperature is applied at training).
    ``cpu_bf16``: the forward under bf16 autocast on a CPU with native bf16 (``encode.bf16_autocast``)."""

    def __init__(
        self,
        model: str,
        max_seq_length: int,
        batch_size: int,
        prompt: str = "",
        dtype: str = "float32",
        threads: int | None = None,
        cpu_bf16: bool = False,
    ):
        from mdistill.encode import load_classifier

        _threads(threads)
        self.node = _node_id()
        self.model, self.tokenizer = load_classifier(model)
        self.max_seq_length, self.batch_size, self.prompt, self.cpu_bf16 = max_seq_length, batch_size, prompt, cpu_bf16

    def __call__(self, batch: pa.Table) -> pa.Table:
        from mdistill.encode import classify_batch

        texts = batch.column("text").to_pylist()
        logits = classify_batch(
            self.model,
            self.tokenizer,
            texts,
            batch_size=self.batch_size,
            max_seq_length=self.max_seq_length,
            prompt=self.prompt,
            cpu_bf16=self.cpu_bf16,
        )
        return _tagged(embeddings_table(_keys(batch, texts), logits).rename_columns(["key", "logits"]), self.node)


class BottomStatesPredictor:
    """The untrained student's mean-pooled output (``pooled``: what the linear-map baseline and the
    Dense head see; ``pooled=False``: not computed, the top layers never run) and, with
    ``keep_states``, its hidden states after ``frozen_layers`` layers (``hidden``: float16 bytes,
    ``length``, ``dim``: what the top layers train on), keyed by text hash like the teacher cache.
    A full fine-tune keeps no states: it trains from text. ``cpu_bf16``: ``models.split.bottom_states``'."""

    def __init__(
        self,
        model: str,
        frozen_layers: int,
        max_seq_length: int,
        batch_size: int,
        prompt: str,
        keep_states: bool = True,
        threads: int | None = None,
        pooled: bool = True,
        cpu_bf16: bool = False,
    ):
        _threads(threads)
        self.node = _node_id()
        self.model = load_sentence_transformer(model, max_seq_length=max_seq_length)
        self.frozen_layers, self.batch_size, self.prompt, self.keep_states = frozen_layers, batch_size, prompt, keep_states
        self.pooled, self.cpu_bf16 = pooled, cpu_bf16

    def __call__(self, batch: pa.Table) -> pa.Table:
        from mdistill.models.split import bottom_states

        texts = batch.column("text").to_pylist()
        states, pooled = bottom_states(
            self.model,
            texts,
            self.frozen_layers,
            prompt=self.prompt,
            batch_size=self.batch_size,
            pooled=self.pooled,
            cpu_bf16=self.cpu_bf16,
        )
        keys = _keys(batch, texts)
        out = (
            embeddings_table(keys, pooled).rename_columns(["key", "pooled"])
            if self.pooled
            else pa.table({"key": pa.array(keys, pa.string())})
        )
        if self.keep_states:
            out = (
                out.append_column("hidden", pa.array([s.tobytes() for s in states], pa.binary()))
                .append_column("length", pa.array([s.shape[0] for s in states], pa.int32()))
                .append_column("dim", pa.array([s.shape[1] for s in states], pa.int32()))
            )
        return _tagged(out, self.node)
