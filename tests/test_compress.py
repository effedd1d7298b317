"""The compression recipe: a student built from the teacher (layers kept, vocabulary trimmed),
trained in the teacher's own space, optionally on its intermediate layers (the teacher in the
loop), evaluated beside it with size and speed columns. Kernels on tiny random-init models; one
end-to-end run on real Ray."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mdistill.config import ConfigError, StudentConfig, load_config
from mdistill.encode import load_sentence_transformer
from mdistill.losses import AttentionRelationLoss, HiddenStateLoss, MSELoss
from mdistill.models.builder import build_student
from mdistill.models.layer_distill import LayerDistilledStudent, WithIntermediate, token_id_map
from mdistill.models.split import FullStudent, pad_ids
from mdistill.models.trim_vocab import used_token_ids

from conftest import tiny_run_overrides


def test_compress_config_is_checked_before_any_compute():
    cfg = load_config("configs/compress.yaml")
    assert cfg.compress is not None and cfg.student.full_finetune and cfg.student.keep_layers and cfg.student.trim_vocab
    assert cfg.teacher.prompt == "query: " and cfg.teacher.max_seq_length == cfg.student.max_seq_length
    for bad, says in [
        (["student.projection=lstsq"], "projection must be none"),
        (["compress.hidden_weight=1", "student.train_layers=2"], "train_layers: all"),
        (["compress.attention_weight=1", "train.strategy=deepspeed"], "under DDP"),
        (["compress.self_weight=1.5"], "less than or equal to 1"),
        (["students=[{name: a}]"], "one student"),
    ]:
        with pytest.raises((ConfigError, ValueError), match=says):
            load_config("configs/compress.yaml", bad)


def test_blended_target_is_the_two_term_mse_minimiser():
    """(1 − w)·‖s − a‖² + w·‖s − b‖² = ‖s − ((1 − w)·a + w·b)‖² + const: one target, same gradients."""
    from mdistill.stages.student import _blend_target
    from mdistill.teacher.cache import embedding_matrix, embeddings_table

    rng = np.random.default_rng(0)
    a, b, s = (rng.standard_normal((5, 4)).astype(np.float32) for _ in range(3))
    batch = embeddings_table(list("vwxyz"), a).rename_columns(["key", "target"])
    batch = batch.append_column("self_target", embeddings_table(list("vwxyz"), b).column("embedding"))
    out = _blend_target(batch, self_weight=0.25)
    assert out.column_names == ["key", "target"]
    c = embedding_matrix(out.column("target"))
    np.testing.assert_allclose(c, 0.75 * a + 0.25 * b, rtol=1e-6)
    st = torch.tensor(s, requires_grad=True)
    two = 0.75 * ((st - torch.tensor(a)) ** 2).sum() + 0.25 * ((st - torch.tensor(b)) ** 2).sum()
    (g_two,) = torch.autograd.grad(two, st)
    (g_one,) = torch.autograd.grad(((st - torch.tensor(c)) ** 2).sum(), st)
    torch.testing.assert_close(g_one, g_two)


@pytest.fixture(scope="module")
def teacher_and_student(tiny_models, pairs, tmp_path_factory):
    """The tiny 3-layer model as the teacher; the student keeps its layers 0 and 2, vocabulary trimmed to a few texts."""
    texts = list(pairs.text[:40]) + list(pairs.en[:40])
    built = build_student(
        StudentConfig(model=str(tiny_models["student"]), keep_layers=[0, 2], trim_vocab=True),
        tmp_path_factory.mktemp("compress-cache"),
        used_ids=lambda d, p: used_token_ids(load_sentence_transformer(d, device="cpu").tokenizer, [p + t for t in texts]),
        corpus_key="test",
    )
    teacher = load_sentence_transformer(str(tiny_models["student"]), device="cpu")
    return teacher, load_sentence_transformer(built["path"], device="cpu"), texts, built["path"]


def _batch(st, texts):
    ids = st.tokenizer(["query: " + t for t in texts], truncation=True, max_length=32)["input_ids"]
    return pad_ids([np.asarray(x) for x in ids], st.tokenizer.pad_token_id)


def test_token_id_map_feeds_the_teacher_its_own_ids(teacher_and_student):
    teacher, student, texts, _ = teacher_and_student
    id_map = token_id_map(student.tokenizer, teacher.tokenizer)
    assert len(id_map) == len(student.tokenizer) < len(teacher.tokenizer)
    s_ids, s_mask = _batch(student, texts[:8])
    t_ids, t_mask = _batch(teacher, texts[:8])
    assert torch.equal(torch.as_tensor(id_map)[s_ids][s_mask.bool()], t_ids[t_mask.bool()])
    with pytest.raises(ValueError, match="not in the teacher's"):
        token_id_map(teacher.tokenizer, student.tokenizer)  # the teacher has pieces the trimmed student lacks


def test_intermediate_losses_are_checked_in_the_driver_before_training(teacher_and_student, tiny_models):
    from mdistill.config import CompressConfig
    from mdistill.stages.compress import intermediate_spec

    *_, student_dir = teacher_and_student
    teacher_dir = str(tiny_models["student"])
    on = CompressConfig(hidden_weight=1.0, relation_heads=4)
    assert intermediate_spec(CompressConfig(), teacher_dir, student_dir) is None  # output loss only: nothing to check
    assert intermediate_spec(on, teacher_dir, student_dir).teacher_path == teacher_dir
    with pytest.raises(ValueError, match="not in the teacher's"):
        intermediate_spec(on, student_dir, teacher_dir)  # the trimmed model lacks pieces of the full one
    with pytest.raises(ValueError, match=r"layer_map \{3: 3\}: outside the student's 0..2"):
        intermediate_spec(on.model_copy(update={"layer_map": {1: 1, 3: 3}}), teacher_dir, student_dir)


def test_layer_distilled_student_adds_the_hand_computed_intermediate_terms(teacher_and_student):
    teacher, student, texts, _ = teacher_and_student
    t_bert = teacher[0].auto_model
    model = LayerDistilledStudent(
        student, t_bert, token_id_map(student.tokenizer, teacher.tokenizer), hidden_weight=0.7, attention_weight=0.3, relation_heads=4
    )
    assert model.layer_map == {1: 2, 2: 3}  # uniform: 2 student layers onto 3 teacher layers
    model.set_dropout(0.0)  # as the loop sets it (student.dropout): the terms are then deterministic
    ids, mask = _batch(student, texts[:6])
    t_ids, _ = _batch(teacher, texts[:6])
    y = torch.nn.functional.normalize(torch.randn(6, 32), dim=-1)

    model.eval()
    plain = FullStudent(student)(ids, mask)
    assert torch.allclose(model(ids, mask), plain)  # evaluation: exactly the exported model's forward
    model.train()
    loss = WithIntermediate(MSELoss(), model)(model(ids, mask), y)

    # the same terms from the models' outputs, Q/K/V recomputed from each last layer's input
    with torch.no_grad():
        s_out = model.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        t_out = t_bert(input_ids=t_ids, attention_mask=mask, output_hidden_states=True)
        s_att, t_att = model.bert.encoder.layer[1].attention.self, t_bert.encoder.layer[2].attention.self
        s_qkv = tuple(f(s_out.hidden_states[1]) for f in (s_att.query, s_att.key, s_att.value))
        t_qkv = tuple(f(t_out.hidden_states[2]) for f in (t_att.query, t_att.key, t_att.value))
        want = (
            MSELoss()(plain, y)
            + 0.7 * HiddenStateLoss({1: 2, 2: 3}, 32)(s_out.hidden_states, t_out.hidden_states, mask)
            + 0.3 * AttentionRelationLoss(4)(s_qkv, t_qkv, mask)
        )
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)

    loss.backward()
    assert all(p.grad is not None for p in model.bert.encoder.parameters())
    assert all(p.grad is None for p in t_bert.parameters())  # the teacher is frozen and outside the module tree
    assert model.state_dict().keys() == FullStudent(student).state_dict().keys()  # checkpoints and the export are unchanged


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_compress_run_learns_the_teacher_and_reports_size_and_speed(tmp_path, tiny_models, pairs, ray_shared, show):
    from mdistill.pipelines.compress import run
    from mdistill.report import load_report

    outside = tmp_path / "outside.parquet"  # held out (out-of-domain): other English sentences, never trained on
    pq.write_table(pa.Table.from_pandas(pairs.groupby("lang").head(60).assign(en=lambda d: "Also: " + d.en), preserve_index=False), outside)
    overrides = [
        *tiny_run_overrides(tmp_path, tiny_models, pairs.to_dict("records")),
        f"corpus.sources=[{{format: parquet, paths: [{tmp_path / 'corpus.parquet'}]}}, {{format: parquet, name: outside, paths: [{outside}]}}]",
        "corpus.heldout_sources=[outside]",
        f"teacher.model={tiny_models['student']}",  # the tiny 3-layer model is the teacher, the student keeps 2 of its layers
        "student.keep_layers=[0, 2]",
        "teacher.max_seq_length=64",
        "compress.self_weight=0.5",  # the teacher labels every translation; the blended target is joined
        "compress.hidden_weight=1.0",
        "compress.attention_weight=1.0",
        "compress.relation_heads=4",
        "compress.speed_sentences=64",
        "train.epochs=6",
        "train.batch_size=16",
        "train.lr=1e-3",
        "train.loss=mse",  # the distance assertions below pin the MSE objective (the default adds a ranking term)
    ]
    report = run(load_config("configs/compress.yaml", overrides))
    assert load_report(tmp_path / "run" / "report.json").speed.keys() == {"teacher", "student"}

    s = report.students["student"]
    assert {x["step"] for x in s.built_from} == {"load", "prune_layers", "trim_vocab"}
    assert s.layers == 2 and s.loss == "mse+hidden+attention_relation"
    assert report.speed["student"].params == s.params < report.speed["teacher"].params
    assert report.speed["teacher"].x_teacher == 1.0 and report.speed["student"].sentences_per_s > 0
    assert s.export.max_abs_diff < 1e-5 and s.export.checked > 0

    for table, where in ((report.metrics, "dev"), (report.heldout_metrics, "heldout")):
        assert set(table) == {"de", "fr"}, where
        assert {"teacher", "untrained", "linear_map", "student"} <= set(next(iter(table.values())).models)

    # in the teacher's own space, on texts trained on and on held-out ones: the exported student
    # is much closer to the teacher than the student it started as
    teacher = load_sentence_transformer(str(tiny_models["student"]), device="cpu")
    for where, texts, most in (("trained", list(pairs.text[:60]), 0.5), ("held-out", ["Also: " + t for t in pairs.en[:60]], 0.8)):
        want = teacher.encode(texts)
        before, after = (
            float(((load_sentence_transformer(p, device="cpu").encode(texts) - want) ** 2).sum(1).mean()) for p in (s.model, s.export.path)
        )
        show(where, f"squared distance to the teacher: untrained {before:.4f} -> trained {after:.4f}")
        assert after < most * before, where
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Compression: size and speed" in md and "bitext F1" in md
