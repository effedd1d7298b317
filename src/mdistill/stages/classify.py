"""Stages of the classify recipe (``pipelines/classify.py``): each classifier's training rows and
loop config, the resume stamp, the result read back, per-language metrics and the export.

Roles (``classify.students`` plus the teacher):

==================  ============  ===========================================  ==================
role                mode          rows                                         target
==================  ============  ===========================================  ==================
teacher             supervised    English training paragraphs                  gold labels
zero_shot           supervised    English training paragraphs                  gold labels
translate_train     supervised    English + every translation                  gold labels
soft                soft          English + every translation                  α·KL(teacher) + (1−α)·CE
hard                hard          English + every translation                  teacher argmax
online              online        English + every translation (teacher: en)    both learn (DML)
==================  ============  ===========================================  ==================

``zero_shot`` trains as many optimizer steps as the students on all languages (more epochs over
fewer rows), so it is not a weaker baseline for lack of updates.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.train

from mdistill.config import ClassifyConfig, RunConfig, TrainConfig
from mdistill.evaluation.ClassificationEvaluator import ClassificationEvaluator
from mdistill.models.st_format import default_prompt_of
from mdistill.report.schema import ClassifyTable, ClassMetrics, TrainLogs
from mdistill.stages.cache_pass import add_keys, join_files
from mdistill.stages.classify_data import TaskData
from mdistill.stages.student import Student, open_states
from mdistill.teacher.cache import EmbeddingCache, embedding_matrix
from mdistill.training import checkpoint as ckpt
from mdistill.training.classify_loop import EVAL_LOGITS, MODEL_DIR, TEACHER_DIR, ClassifyLoopConfig

SETTINGS_FILE = "mdistill_settings.json"
MODES = {
    "teacher": "supervised",
    "zero_shot": "supervised",
    "translate_train": "supervised",
    "soft": "soft",
    "hard": "hard",
    "online": "online",
}
ENGLISH_ONLY = {"teacher", "zero_shot"}


def frozen_student(cfg: RunConfig, model_path: str) -> Student | None:
    """The student's frozen pass: its hidden states after the frozen layers (all but
    ``student.train_layers``), cached per text (``student_states``, like the embedding recipe's),
    so every role's step runs only the top layers. None for ``train_layers: all`` (text)."""
    if cfg.student.full_finetune:
        return None
    return open_states(
        "student",
        cfg.student,
        model_path,
        cfg.cache_path,
        steps=[],
        batch_size=cfg.eval.batch_size,
        pooled=False,
        cpu_bf16=cfg.train.cpu_bf16,
    )


@dataclass(frozen=True)
class TaskFiles:
    """The task's rows as Parquet the workers stream (no process holds the states):
    ``train/``: text, lang, en, label_id, logits (the teacher's, of the English source);
    ``eval/split={dev,test}/``: row (its index in ``TaskData.eval``), text, lang, label_id;
    both with the cached states (hidden, length, dim) when ``states``."""

    train: Path
    eval: Path
    states: bool
    fingerprint: str  # the rows and the states' cache: part of each role's resume stamp

    @property
    def dev(self) -> Path:
        return self.eval / "split=dev"

    def eval_table(self, columns: list[str] = ["row", "text", "lang", "label_id"]) -> pa.Table:  # noqa: B006
        """The evaluation rows (no states) in ``row`` order, ``split`` a plain string column."""
        t = pq.read_table(self.eval, columns=[*columns, "split"]).sort_by("row")
        return t.set_column(t.schema.get_field_index("split"), "split", t.column("split").cast(pa.string()))

    def role(self, role: str) -> ray.data.Dataset:
        """A role's training rows (``role_rows``), streamed."""
        return ray.data.read_parquet(str(self.train)).map_batches(partial(role_rows, role=role), batch_format="pyarrow")


def _write_joined(rows: pa.Table, s: Student | None, out: Path, partition_cols: list[str] | None = None) -> None:
    """``rows`` (+ the states of their texts, joined on Ray Data) as Parquet under ``out``; every row must find its states."""
    shutil.rmtree(out, ignore_errors=True)
    ds = ray.data.from_arrow(rows)
    if s is not None:
        ds = ds.map_batches(add_keys, batch_format="pyarrow")
        ds = join_files(ds, [str(p) for p in s.cache.readable_shards()], key="key", left_key="key", columns=["hidden", "length", "dim"])
        ds = ds.drop_columns(["key"])
    ds.write_parquet(str(out), partition_cols=partition_cols)
    written = sum(pq.ParquetFile(f).metadata.num_rows for f in out.rglob("*.parquet"))
    if written != rows.num_rows:
        raise RuntimeError(
            f"{out}: {written} rows joined with the student's cached states, {rows.num_rows} expected: a text lacks its "
            f"states or the cache holds a key twice (check with `mdistill cache verify`)"
        )


def with_teacher_logits(rows: pa.Table, teacher_cache: EmbeddingCache) -> pa.Table:
    """``rows`` + ``logits``: the teacher's cached logits of each row's English source (a translation
    learns what the teacher says of its English)."""
    logits = teacher_cache.lookup(rows.column("en").to_pylist(), column="logits")
    return rows.append_column("logits", pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), logits.shape[1]))


def eval_rows(task: TaskData, splits: tuple[str, ...] = ("dev", "test")) -> pa.Table:
    """The evaluation rows of ``splits`` (Tune looks at dev only)."""
    return task.eval.filter(pc.is_in(task.eval.column("split"), pa.array(list(splits))))


def task_files(
    task: TaskData, teacher_cache: EmbeddingCache, s: Student | None, out: Path, splits: tuple[str, ...] = ("dev", "test")
) -> TaskFiles:
    """``TaskFiles`` under ``out`` (rewritten each run: a join of the task's rows, seconds); the
    evaluation rows of ``splits``, their ``row`` their index in ``eval_rows(task, splits)``."""
    train = with_teacher_logits(task.train, teacher_cache)
    evaluation = eval_rows(task, splits).select(["text", "lang", "label_id", "split"])
    evaluation = evaluation.append_column("row", pa.array(range(evaluation.num_rows), pa.int64()))
    _write_joined(train, s, out / "train")
    _write_joined(evaluation, s, out / "eval", partition_cols=["split"])
    fingerprint = hashlib.blake2b(
        f"{table_fingerprint(train)} {table_fingerprint(evaluation)} {s.cache.fingerprint if s else 'text'}".encode(), digest_size=16
    ).hexdigest()
    return TaskFiles(out / "train", out / "eval", s is not None, fingerprint)


def role_rows(rows: pa.Table, role: str) -> pa.Table:
    """A role's training rows: the labelled English paragraphs (teacher, zero_shot); every row with
    its gold label (translate_train: the upper bound, labels the user does not have); every row,
    gold labels only where labelled (soft, hard, online: what the user has, the teacher's outputs
    for the rest)."""
    if role in ENGLISH_ONLY:
        return rows.filter(pc.and_(pc.equal(rows.column("lang"), "en"), rows.column("labelled")))
    if role == "translate_train":
        return rows
    known = pc.if_else(rows.column("labelled"), rows.column("label_id"), pa.scalar(None, pa.int64()))
    return rows.set_column(rows.schema.get_field_index("label_id"), "label_id", known)


def role_train_config(train: TrainConfig, role: str, rows: int, all_rows: int) -> TrainConfig:
    """``train:`` for a role: zero_shot gets the epochs that give it the students' optimizer steps."""
    if role != "zero_shot" or rows >= all_rows:
        return train
    return train.model_copy(update={"epochs": max(1, round(train.epochs * all_rows / max(1, rows)))})


def check_layers(model_dir: str, train_layers: int | str, key: str) -> None:
    """Before any worker starts: ``train_layers`` fits the model (its config.json), naming the key."""
    cfg = Path(model_dir) / "config.json"
    n = json.loads(cfg.read_text()).get("num_hidden_layers") if cfg.exists() else None
    if isinstance(train_layers, int) and n is not None and train_layers > n:
        raise ValueError(f"{key}: {train_layers} layers to train, but {model_dir} has {n}")


def longest_first(roles: list[str]) -> list[str]:
    """The roles in the order they start when fewer run at once than there are: ``online`` (a
    teacher forward and backward every step: about twice a student's time) first, so the others
    fill the remaining slots around it instead of leaving it to run alone at the end."""
    return sorted(roles, key=lambda r: r != "online")


def role_threads(role: str, threads: int, train: TrainConfig) -> int:
    """Torch threads of a role's workers. ``online`` does ~1.7x the work of a student (a teacher
    forward and backward every step) and outlives the others: on CPU it gets at least 2 threads,
    which it uses alone once they finish (measured on 2 cores: its tail halves)."""
    return max(threads, 2) if role == "online" and not train.use_gpu else threads


def loop_config(
    cfg: RunConfig,
    role: str,
    *,
    model_path: str,
    rows: int,
    train: TrainConfig,
    eval_path: Path | None,
    threads: int,
    teacher_base: str | None,
    states: bool = False,
    dev_path: Path | None = None,
) -> ClassifyLoopConfig:
    """A role's worker settings. ``states``: the student trains from ``TaskFiles``' cached states
    (never the teacher role, which trains its own encoder from text)."""
    c: ClassifyConfig = cfg.classify
    teacher = role == "teacher"
    check_layers(
        model_path,
        c.teacher_train_layers if teacher else cfg.student.train_layers,
        "classify.teacher_train_layers" if teacher else "student.train_layers",
    )
    if role == "online":
        check_layers(teacher_base, c.teacher_train_layers, "classify.teacher_train_layers")
    return ClassifyLoopConfig(
        name=role,
        mode=MODES[role],
        model_path=model_path,
        labels=_labels(cfg),
        train_layers=c.teacher_train_layers if teacher else cfg.student.train_layers,
        pooling=c.pooling,
        prompt=default_prompt_of(model_path) if cfg.student.prompt is None or teacher else cfg.student.prompt,
        max_seq_length=cfg.teacher.max_seq_length if teacher else cfg.student.max_seq_length,
        head_lr=c.head_lr,
        teacher_path=teacher_base if role == "online" else None,
        teacher_train_layers=c.teacher_train_layers,
        teacher_max_seq_length=cfg.teacher.max_seq_length,
        states=states and not teacher,
        eval_path=str(eval_path) if eval_path else None,
        dev_path=str(dev_path) if dev_path else None,
        train_rows=rows,
        threads=threads,
        seed=cfg.seed,
        train=train.model_copy(update={"lr": c.teacher_lr, "epochs": c.teacher_epochs}) if teacher else train,
    )


def _labels(cfg: RunConfig) -> list[str]:
    from mdistill.tasks import help_topics

    return help_topics.labels()


def fresh_or_resume(run_path: Path, loop: ClassifyLoopConfig, data_fingerprint: str) -> None:
    """Keep a stopped run's checkpoints only if training would be the same (loop settings but
    threads, the rows' content); else start afresh."""
    identity = loop.model_dump(exclude={"threads": True, "tracking": True, "train": {"resume", "max_failures"}})
    wanted = json.dumps({"loop": identity, "data": data_fingerprint}, sort_keys=True, default=str)
    stamp = run_path / SETTINGS_FILE
    if run_path.exists() and (not loop.train.resume or not stamp.exists() or stamp.read_text() != wanted):
        shutil.rmtree(run_path)
    run_path.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wanted)


def table_fingerprint(t: pa.Table) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in t.column_names:
        h.update(name.encode())
        for chunk in t.column(name).chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(memoryview(buf))
    return h.hexdigest()


@dataclass
class TrainedClassifier:
    logs: TrainLogs
    model_dir: Path  # the Hugging Face directory in the final checkpoint
    eval_logits: np.ndarray | None  # [eval rows, labels], in the order of the eval table
    online_teacher_dir: Path | None = None


def load_trained(result: ray.train.Result) -> TrainedClassifier:
    """The final checkpoint of a local or shared storage path (the recipe's storage is a folder every node sees)."""
    d = Path(result.checkpoint.path)
    state = ckpt.read_state(d)
    logits = embedding_matrix(pq.read_table(d / EVAL_LOGITS).sort_by("row").column("logits")) if (d / EVAL_LOGITS).exists() else None
    teacher = d / TEACHER_DIR
    return TrainedClassifier(state.logs, d / MODEL_DIR, logits, teacher if teacher.exists() else None)


def metrics_table(eval_rows: pa.Table, logits_by_model: dict[str, np.ndarray], split: str) -> ClassifyTable:
    """Per language of ``split``: accuracy and macro-F1 of each model's logits (rows of ``eval_rows``)."""
    in_split = np.asarray(pc.equal(eval_rows.column("split"), split).to_numpy(zero_copy_only=False))
    langs = np.asarray(eval_rows.column("lang").to_pylist())
    labels = eval_rows.column("label_id").to_numpy()
    out: ClassifyTable = {}
    for lang in sorted(set(langs[in_split]), key=lambda x: (x != "en", x)):
        m = in_split & (langs == lang)
        out[lang] = {
            name: ClassMetrics(**ClassificationEvaluator.compute(logits[m], labels[m])) for name, logits in logits_by_model.items()
        }
    return out


def confusion(eval_rows: pa.Table, logits: np.ndarray, split: str, n_labels: int, *, english: bool = False) -> list[list[int]]:
    """[true][predicted] counts over ``split``'s translations (or its English rows)."""
    lang_en = np.asarray(pc.equal(eval_rows.column("lang"), "en").to_numpy(zero_copy_only=False))
    m = np.asarray(pc.equal(eval_rows.column("split"), split).to_numpy(zero_copy_only=False)) & (lang_en if english else ~lang_en)
    cm = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(cm, (eval_rows.column("label_id").to_numpy()[m], logits[m].argmax(1)), 1)
    return cm.tolist()


def transfer_checks(test: ClassifyTable, student: str, *, margin: float = 0.03, of_teacher: float = 0.95) -> dict[str, dict[str, bool]]:
    """Per non-English language: the student's accuracy >= zero-shot + ``margin``, and >=
    ``of_teacher`` x the teacher's English accuracy (the issue's bar for the distilled student)."""
    en_teacher = test.get("en", {}).get("teacher")
    out: dict[str, dict[str, bool]] = {f"{student}_vs_zero_shot": {}, f"{student}_vs_teacher_en": {}}
    for lang, row in test.items():
        if lang == "en" or student not in row:
            continue
        acc = row[student].accuracy
        if "zero_shot" in row:
            out[f"{student}_vs_zero_shot"][lang] = acc >= row["zero_shot"].accuracy + margin
        if en_teacher is not None:
            out[f"{student}_vs_teacher_en"][lang] = acc >= of_teacher * en_teacher.accuracy
    return {k: v for k, v in out.items() if v}


def param_count(model_dir: Path) -> int:
    """Parameters of a saved Hugging Face model, from its safetensors header (nothing loaded)."""
    from safetensors import safe_open

    n = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            n += sum(int(np.prod(st.get_slice(k).get_shape())) for k in st.keys())
    return n


EXPORT_CHECK_ROWS = 64


def export_check(model_dir: str, texts: list[str], want: np.ndarray, *, max_seq_length: int, prompt: str) -> float:
    """Max abs difference between the exported classifier's logits from text (loaded as users load
    it, ``AutoModelForSequenceClassification``) and ``want``, the logits that were evaluated (a
    student trained from cached states evaluated from states)."""
    from mdistill.encode import load_classifier
    from mdistill.training.classify_step import predict_logits

    model, tokenizer = load_classifier(model_dir)
    got = predict_logits(model, texts, tokenizer, max_seq_length=max_seq_length, prompt=prompt)
    return float(np.abs(got - want).max())


def export_classifier(trained_dir: Path, out: Path, card: str) -> Path:
    """The trained Hugging Face directory, copied out of the checkpoint, with its model card."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(trained_dir, out)
    (out / "README.md").write_text(card)
    return out
