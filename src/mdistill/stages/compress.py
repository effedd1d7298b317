"""Compression stage: what the compression recipe (``pipelines/compress.py``) adds to the
embedding recipe's stages: the intermediate-layer settings the training loop reads, and the size
and encode speed of the teacher and the student, measured in the run on the same sentences."""

from __future__ import annotations

import os
import time
from pathlib import Path

import ray

from mdistill.config import CompressConfig
from mdistill.report.schema import ModelSpeed
from mdistill.training.loop import IntermediateSpec


def intermediate_spec(cfg: CompressConfig, teacher_dir: str, student_dir: str) -> IntermediateSpec | None:
    """The loop's intermediate-layer losses (None: output distillation from the cache alone),
    checked here in the driver, before training: the same width (the export holds no
    projection), every student piece in the teacher's tokenizer, ``layer_map`` within both models."""
    if not cfg.intermediate:
        return None
    from transformers import AutoConfig, AutoTokenizer

    from mdistill.models.layer_distill import token_id_map

    t_cfg, s_cfg = AutoConfig.from_pretrained(teacher_dir), AutoConfig.from_pretrained(student_dir)
    if t_cfg.hidden_size != s_cfg.hidden_size:
        raise ValueError(
            f"compress.hidden_weight / attention_weight: the student {student_dir} is {s_cfg.hidden_size} wide, the teacher "
            f"{teacher_dir} {t_cfg.hidden_size}: intermediate-layer losses need a student built from the teacher (keep_layers / trim_vocab)"
        )
    token_id_map(AutoTokenizer.from_pretrained(student_dir), AutoTokenizer.from_pretrained(teacher_dir))  # raises on a missing piece
    bad = {i: j for i, j in (cfg.layer_map or {}).items() if not (0 <= i <= s_cfg.num_hidden_layers and 0 <= j <= t_cfg.num_hidden_layers)}
    if bad:
        raise ValueError(
            f"compress.layer_map {bad}: outside the student's 0..{s_cfg.num_hidden_layers} / the teacher's "
            f"0..{t_cfg.num_hidden_layers} hidden states (0 = embeddings)"
        )
    return IntermediateSpec(
        teacher_path=teacher_dir,
        hidden_weight=cfg.hidden_weight,
        attention_weight=cfg.attention_weight,
        relation_heads=cfg.relation_heads,
        layer_map=cfg.layer_map,
    )


def disk_mb(path: str | Path) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*.safetensors")) / 2**20, 1)


@ray.remote(num_cpus=1)
def encode_speed(models: dict[str, str], texts: list[str], *, batch_size: int, max_seq_length: int) -> dict[str, ModelSpeed]:
    """Each model's ``SentenceTransformer.encode`` on ``texts`` (best of three timed passes after a
    warm-up), one model after the other in one process. The first model is the reference of
    ``x_teacher``. Run when nothing else computes: the task uses every core of its node."""
    import torch

    from mdistill.encode import load_sentence_transformer

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    out: dict[str, ModelSpeed] = {}
    for name, path in models.items():
        st = load_sentence_transformer(path, max_seq_length=max_seq_length)
        st.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
        best = float("inf")
        for _ in range(3):  # best of three: a pass can share the cores with a worker still shutting down
            t = time.perf_counter()
            st.encode(texts, batch_size=batch_size, convert_to_numpy=True)
            best = min(best, time.perf_counter() - t)
        rate = len(texts) / best
        first = next(iter(out.values()), None)
        out[name] = ModelSpeed(
            path=str(path), params=sum(p.numel() for p in st.parameters()), disk_mb=disk_mb(path), sentences_per_s=round(rate, 1),
            x_teacher=round(rate / first.sentences_per_s, 2) if first else 1.0, sentences=len(texts), batch_size=batch_size,
            threads=threads, device=str(st.device),
        )  # fmt: skip
        del st
    return out
