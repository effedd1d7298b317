"""The exported student loads with sentence-transformers and transformers; its model card names
the teacher, the languages and the metrics."""

from __future__ import annotations

import numpy as np
import torch
import yaml

from mdistill.encode import load_sentence_transformer
from mdistill.export import export_student, model_card_info, write_model_card
from mdistill.report.schema import Metrics

from report_fixtures import run_report


def test_export_loads_and_card(tmp_path, tiny_models, pairs):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    st = load_sentence_transformer(str(tiny_models["student"]), device="cpu")
    torch.manual_seed(0)
    dense = torch.nn.Linear(32, 24)
    out = export_student(st, dense, tmp_path / "model", prompt="query: ", extra={"teacher": "tiny-teacher"})
    for f in ("modules.json", "config_sentence_transformers.json", "config.json"):
        assert (out / f).is_file(), f

    texts = list(pairs.text[:8])
    loaded = SentenceTransformer(str(out), device="cpu")
    v = loaded.encode(texts, convert_to_numpy=True)
    assert v.shape == (8, 24) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)  # Dense then Normalize
    assert loaded.default_prompt_name == "query" and loaded.prompts["query"] == "query: "
    hf = AutoModel.from_pretrained(str(out))
    assert hf.config.hidden_size == 32 and hf.config.num_hidden_layers == 3

    report = run_report("demo", {"s1": (str(out), 0.9), "s2": (str(out), 0.7)}, langs=("de", "fr", "zh_CN"))
    report.config["train"] = {"epochs": 2}
    report.students["s1"].built_from = [{"step": "load", "model": "tiny-student"}]
    for row in report.metrics.values():
        row.models["s1:linear_map"] = Metrics(teacher_space_top1=0.8, mse100=0.12)
    report.baselines = ["teacher", "s1:linear_map", "s2:linear_map"]
    info = model_card_info(report, "s1")
    assert set(info.metrics["de"].models) == {"teacher", "s1", "s1:linear_map"}  # the other student is left out
    card = write_model_card(out, info)
    text = card.read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["library_name"] == "sentence-transformers" and front["pipeline_tag"] == "sentence-similarity"
    assert front["language"] == ["en", "de", "fr", "zh"] and "knowledge-distillation" in front["tags"]
    assert front["base_model"] == "tiny-student"
    for needle in (
        "tiny-teacher",
        "zh_CN",
        "| de | 10 | **s1** | 0.900 |",
        "teacher-space top-1",
        "fixture: rows in 100, kept 90",
        "| de | 80 | 10 |",
        "epochs: 2",
    ):
        assert needle in text, needle
    SentenceTransformer(str(out), device="cpu")  # the card does not break loading
