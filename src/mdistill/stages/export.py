"""Export stage: the trained student as a sentence-transformers directory, checked against the
vectors mdistill trained and evaluated (``SentenceTransformer(path).encode`` on dev sentences).

The run calls ``export`` in a Ray task: it builds the model twice (ours, then the exported one
loaded back), ~1 GB for e5-small, which the driver never has to hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mdistill.encode import load_sentence_transformer
from mdistill.export import export_student
from mdistill.models.split import FullStudent, TopStudent
from mdistill.report.schema import ExportCheck
from mdistill.stages.student import Student, TrainingSet
from mdistill.stages.train import Trained
from mdistill.teacher.cache import embedding_matrix


def trained_model(student: Student, trained: Trained):
    """The student's SentenceTransformer with the trained weights in place, and its Dense head."""
    st = load_sentence_transformer(student.path, device="cpu", max_seq_length=student.config.max_seq_length)
    w = trained.weights()
    dense = torch.nn.Linear(w["dense.weight"].shape[1], w["dense.weight"].shape[0]) if "dense.weight" in w else None
    module = FullStudent(st, dense) if student.full_finetune else TopStudent(st, int(student.config.train_layers), dense)
    module.load_state_dict(w)  # the modules are the SentenceTransformer's own: this sets its weights
    return st, dense


def export(
    student: Student, trained: Trained, ts: TrainingSet, out_dir: Path, *, extra: dict, check_rows: int = 100
) -> tuple[ExportCheck, int]:
    """Write the model; returns the check and the exported model's parameter count."""
    st, dense = trained_model(student, trained)
    path = export_student(st, dense, out_dir, prompt=student.prompt, extra=extra)
    params = sum(p.numel() for p in st.parameters()) + (sum(p.numel() for p in dense.parameters()) if dense is not None else 0)
    del st, dense  # before the exported copy is loaded back
    dev = ts.dev_table(["key", "text"]).slice(0, check_rows)
    ours = dict(zip(trained.dev_vectors.column("key").to_pylist(), embedding_matrix(trained.dev_vectors.column("embedding"))))
    want = np.stack([ours[k] for k in dev.column("key").to_pylist()])
    got = load_sentence_transformer(str(path), device="cpu").encode(dev.column("text").to_pylist(), batch_size=64, convert_to_numpy=True)
    return ExportCheck(path=str(path), checked=len(want), max_abs_diff=float(np.abs(got - want).max())), params
