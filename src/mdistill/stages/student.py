"""Student stage: build the student, open its frozen-pass cache, join everything it trains on
into one training set, and fit the linear maps that start its head and serve as a baseline.

- ``build``: a packaged offline model, any HF id or a local path, then layer pruning
  (``keep_layers``) and vocabulary trimming (``trim_vocab``, the pieces counted on Ray Data).
- The frozen pass (``BottomStatesPredictor`` on an actor pool, ``stages.cache_pass``) caches,
  per text, the untrained student's pooled output and, unless the student is fully fine-tuned,
  its hidden states after the frozen bottom layers.
- ``prepare_training_set``: the student's rows joined on Ray Data with the teacher's vector of
  their English source (``en_key``) and with their cached outputs (``key``), written once per
  content fingerprint as Parquet partitioned by split. Training streams ``split=train``; the
  workers read ``split=dev`` and ``split=heldout``. No process holds the rows or the states.
- ``fit_linear_maps``: least squares from pooled outputs to teacher vectors, from sums computed
  block by block.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from mdistill.config import StudentConfig
from mdistill.log import get_logger
from mdistill.models.split import add_sums, gram_sums, lstsq_from_sums
from mdistill.models.st_format import default_prompt_of, num_layers
from mdistill.resources import Nodes
from mdistill.stages.cache_pass import join_files, pool_args
from mdistill.stages.select import Selection
from mdistill.teacher.cache import EmbeddingCache, embedding_matrix, model_fingerprint
from mdistill.teacher.predictor import BottomStatesPredictor

log = get_logger("student")
TRAINING_SET_VERSION = 2  # bump when the joined columns change


@dataclass(frozen=True)
class Student:
    name: str
    config: StudentConfig
    path: str  # the built sentence-transformers directory
    steps: list[dict]  # what the builder did, with counts
    prompt: str
    layers: int
    cache: EmbeddingCache  # its frozen-pass outputs per text
    kwargs: dict  # BottomStatesPredictor's constructor arguments, but threads
    batch_rows: int
    predictor: type = BottomStatesPredictor

    def pool_args(self, nodes: Nodes) -> dict:
        return pool_args(self.kwargs, self.batch_rows, nodes)

    @property
    def full_finetune(self) -> bool:
        return self.config.full_finetune

    @property
    def frozen_layers(self) -> int:
        return self.layers if self.full_finetune else self.layers - int(self.config.train_layers)


def _used_ids_batch(batch: pa.Table, model_dir: str, prompt: str) -> pa.Table:
    from transformers import AutoTokenizer

    from mdistill.models.trim_vocab import used_token_ids

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = sorted(used_token_ids(tok, [prompt + t for t in batch.column("text").to_pylist()]))
    return pa.table({"id": pa.array(ids, pa.int64())})


def corpus_token_ids(texts: ray.data.Dataset, model_dir: str, prompt: str) -> set[int]:
    """Every tokenizer id the texts use, counted on Ray Data (the set is bounded by the vocabulary)."""
    ids = texts.map_batches(_used_ids_batch, fn_kwargs={"model_dir": model_dir, "prompt": prompt}, batch_size=8192, batch_format="pyarrow")
    used: set[int] = set()
    for b in ids.iter_batches(batch_size=None, batch_format="pyarrow"):
        used.update(b.column("id").to_pylist())
    return used


def build(name: str, cfg: StudentConfig, cache_dir: Path, data: Selection, *, batch_size: int) -> Student:
    from mdistill.models.builder import build_student

    def used_ids(model_dir: str, prompt: str) -> set[int]:
        return corpus_token_ids(data.student_texts(), model_dir, prompt)

    built = build_student(cfg, cache_dir, used_ids=used_ids, corpus_key=data.fingerprint)
    return open_states(name, cfg, built["path"], cache_dir, steps=built["steps"], batch_size=batch_size)


def open_states(
    name: str,
    cfg: StudentConfig,
    path: str,
    cache_dir: Path,
    *,
    steps: list[dict],
    batch_size: int,
    pooled: bool = True,
    cpu_bf16: bool = False,
) -> Student:
    """The frozen-pass cache of a built student at ``path``: per text, its hidden states after the
    frozen layers (all but ``cfg.train_layers``) and, with ``pooled``, its untrained pooled output
    (the baselines' input: the pass then runs the top layers too), keyed by the model's files and
    these settings (``cpu_bf16``: computed under bf16 autocast where the CPU has native bf16:
    other states, another cache)."""
    prompt = default_prompt_of(path) if cfg.prompt is None else cfg.prompt
    layers = num_layers(path)
    if not cfg.full_finetune and not 1 <= int(cfg.train_layers) <= layers:
        raise ValueError(f"{name}: student.train_layers={cfg.train_layers} but the student has {layers} layers (or use train_layers: all)")
    frozen = layers if cfg.full_finetune else layers - int(cfg.train_layers)
    role = "student-pooled" if cfg.full_finetune else "student-bottom"
    settings = dict(
        frozen_layers=frozen,
        max_seq_length=cfg.max_seq_length,
        prompt=prompt,
        **({} if pooled else {"pooled": False}),
        **({"cpu_bf16": True} if cpu_bf16 else {}),
    )
    fp = model_fingerprint(path, role=role, **settings)
    cache = EmbeddingCache(cache_dir / "student_states", fp)
    cache.write_meta(model=path, kind=role, **settings)
    kwargs = dict(
        model=path,
        frozen_layers=frozen,
        max_seq_length=cfg.max_seq_length,
        batch_size=batch_size,
        prompt=prompt,
        keep_states=not cfg.full_finetune,
        **({} if pooled else {"pooled": False}),
        **({"cpu_bf16": True} if cpu_bf16 else {}),
    )
    return Student(name, cfg, path, steps, prompt, layers, cache, kwargs, batch_rows=512)


# -- the training set -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSet:
    """``dir/split={train,dev,heldout}/*.parquet`` and ``dir/_SUCCESS.json``."""

    dir: Path
    fingerprint: str
    rows: int
    train_rows: int
    dev_rows: int
    states: bool  # hidden states (top-layer training) or text (full fine-tune)
    heldout_rows: int = 0

    @property
    def train_dir(self) -> Path:
        return self.dir / "split=train"

    @property
    def dev_dir(self) -> Path:
        return self.dir / "split=dev"

    def train(self) -> ray.data.Dataset:
        columns = ["hidden", "length", "dim", "target"] if self.states else ["text", "target"]
        return ray.data.read_parquet(str(self.train_dir)).select_columns(columns)

    @property
    def heldout_dir(self) -> Path:
        return self.dir / "split=heldout"

    def dev_table(self, columns: list[str]) -> pa.Table:
        return pq.read_table(self.dev_dir, columns=columns)

    def eval_table(self, columns: list[str]) -> pa.Table:
        """The dev rows, then the held-out rows (``dev_table`` + ``split=heldout``)."""
        parts = [self.dev_table(columns)] + ([pq.read_table(self.heldout_dir, columns=columns)] if self.heldout_rows else [])
        return pa.concat_tables(parts)


def _count_rows(folder: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in folder.rglob("*.parquet")) if folder.is_dir() else 0


def _training_set_id(data: Selection, teacher: EmbeddingCache, student: Student, self_weight: float = 0.0) -> tuple[str, dict]:
    ident = {"selection": data.fingerprint, "teacher": teacher.fingerprint, "student": student.cache.fingerprint, "v": TRAINING_SET_VERSION}
    if self_weight:  # absent at 0: the embedding recipe's sets keep their fingerprints
        ident["self_weight"] = self_weight
    return hashlib.blake2b(json.dumps(ident, sort_keys=True).encode(), digest_size=16).hexdigest(), ident


def find_training_set(
    data: Selection, teacher: EmbeddingCache, student: Student, cache_dir: Path, self_weight: float = 0.0
) -> TrainingSet | None:
    """The training set an earlier run joined from the same selection, teacher, frozen pass and target, if any."""
    fp, _ = _training_set_id(data, teacher, student, self_weight)
    done = cache_dir / "training_sets" / fp / "_SUCCESS.json"
    if not done.is_file():
        return None
    meta = json.loads(done.read_text())
    done.touch()  # last used: what `mdistill cache gc --unused-days` looks at
    return TrainingSet(
        done.parent, fp, meta["rows"], meta["train_rows"], meta["dev_rows"], not student.full_finetune, meta.get("heldout_rows", 0)
    )


def _blend_target(batch: pa.Table, *, self_weight: float) -> pa.Table:
    target = (1 - self_weight) * embedding_matrix(batch.column("target")) + self_weight * embedding_matrix(batch.column("self_target"))
    flat = pa.array(target.astype(np.float32).reshape(-1))
    batch = batch.drop_columns(["target", "self_target"])
    return batch.append_column("target", pa.FixedSizeListArray.from_arrays(flat, target.shape[1]))


def prepare_training_set(
    data: Selection, teacher: EmbeddingCache, student: Student, cache_dir: Path, self_weight: float = 0.0
) -> TrainingSet:
    """The student's rows + ``target`` + its cached outputs, joined on Ray Data and written once per
    fingerprint (selection, teacher, frozen pass, target): re-runs and resumed runs read the same
    files (``find_training_set``). ``target`` is teacher(en), or with ``self_weight`` (compression:
    a multilingual teacher labels every side) (1 − w) · teacher(en) + w · teacher(text)."""
    existing = find_training_set(data, teacher, student, cache_dir, self_weight)
    if existing is not None:
        return existing
    states = not student.full_finetune
    fp, ident = _training_set_id(data, teacher, student, self_weight)
    out = cache_dir / "training_sets" / fp

    teacher_files = [str(p) for p in teacher.readable_shards()]
    student_files = [str(p) for p in student.cache.readable_shards()]
    outputs = ["pooled", *(["hidden", "length", "dim"] if states else [])]
    joined = join_files(data.rows(), teacher_files, key="key", left_key="en_key", columns=["embedding"])  # teacher(en): the target
    joined = joined.rename_columns({"embedding": "target"})
    if self_weight:
        joined = join_files(joined, teacher_files, key="key", left_key="key", columns=["embedding"]).rename_columns(
            {"embedding": "self_target"}
        )
        joined = joined.map_batches(_blend_target, fn_kwargs={"self_weight": self_weight}, batch_format="pyarrow")
    joined = join_files(joined, student_files, key="key", left_key="key", columns=outputs)
    tmp = out.with_name(f".{fp}.{uuid.uuid4().hex}.tmp")
    joined.write_parquet(str(tmp), partition_cols=["split"])
    train_rows, dev_rows, heldout_rows = (_count_rows(tmp / f"split={x}") for x in ("train", "dev", "heldout"))
    rows = train_rows + dev_rows + heldout_rows
    if rows != data.counts.student_rows:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(
            f"training set: {rows} rows joined, {data.counts.student_rows} expected: a text lacks its teacher vector or "
            f"its frozen-pass output, or a cache holds a key twice (check with `mdistill cache verify`)"
        )
    counts = {"rows": rows, "train_rows": train_rows, "dev_rows": dev_rows, "heldout_rows": heldout_rows}
    (tmp / "_SUCCESS.json").write_text(json.dumps({**counts, **ident}))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(out)  # complete or absent
    except OSError:  # another run wrote the same set first
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("training set %s: %d train rows, %d dev rows, %d held-out rows", fp[:12], train_rows, dev_rows, heldout_rows)
    return TrainingSet(out, fp, rows, train_rows, dev_rows, states, heldout_rows)


def gc_training_sets(root: Path, *, unused_days: float | None = None, min_age_s: float = 3600, dry_run: bool = False) -> list[Path]:
    """Remove training sets not used for ``unused_days`` and the leftovers of interrupted writes
    older than ``min_age_s`` (a running write may own younger ones). Returns what was (or would be) removed."""
    import time

    now, doomed = time.time(), []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.name.startswith("."):
            if now - d.stat().st_mtime > min_age_s:
                doomed.append(d)
        elif (
            unused_days is not None
            and (d / "_SUCCESS.json").is_file()
            and now - (d / "_SUCCESS.json").stat().st_mtime > unused_days * 86400
        ):
            doomed.append(d)
    if not dry_run:
        for d in doomed:
            shutil.rmtree(d, ignore_errors=True)
    return doomed


# -- linear maps ----------------------------------------------------------------------------------


SUMS_BATCH_ROWS = 1 << 16  # ~200 MB of pooled + target per task; every batch sends ~2.4 MB of sums to the driver


def _pooled_target(batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    return embedding_matrix(batch.column("pooled")), embedding_matrix(batch.column("target"))


def _sums_batch(batch: pa.Table, *, xy: Callable[[pa.Table], tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    s = gram_sums(*xy(batch))
    return pa.table({k: pa.array([v.ravel()], pa.list_(pa.float64())) for k, v in s.items()})


def streamed_sums(ds: ray.data.Dataset, xy: Callable[[pa.Table], tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """``gram_sums`` of ``xy(batch)`` (the inputs and targets of a least-squares fit) over every
    row of ``ds``, computed block by block where the blocks are and added up in the driver."""
    # blocks summed in file order: the same bits on every run, so a re-run's map is byte-identical
    # and a training that starts from it resumes (the resume stamp hashes it)
    ds.context.execution_options.preserve_order = True
    total = None
    # big batches: the driver receives one set of sums per batch, so few batches keep it flat
    sums = ds.map_batches(partial(_sums_batch, xy=xy), batch_size=SUMS_BATCH_ROWS, batch_format="pyarrow")
    for block in sums.iter_batches(batch_size=None, batch_format="pyarrow"):
        for i in range(block.num_rows):  # numpy straight from Arrow: no Python float per entry
            total = add_sums(total, {k: block.column(k)[i].values.to_numpy() for k in block.column_names})
    if total is None:
        raise ValueError("no training rows to fit a linear map on")
    d, k = len(total["sx"]), len(total["sy"])
    return {**total, "n": total["n"].reshape(()), "sxx": total["sxx"].reshape(d, d), "sxy": total["sxy"].reshape(d, k)}


@dataclass
class LinearMaps:
    linear_map: torch.nn.Linear  # the baseline: pure least squares from the untrained student's pooled output to the teacher
    head: torch.nn.Linear | None  # the Dense head the student starts with (student.projection)
    dims: tuple[int, int]  # (student, teacher)


def fit_linear_maps(ts: TrainingSet, cfg: StudentConfig, name: str) -> LinearMaps:
    train = ray.data.read_parquet(str(ts.train_dir)).select_columns(["pooled", "target"])
    total = streamed_sums(train, _pooled_target)
    d, k = len(total["sx"]), len(total["sy"])
    if cfg.projection == "none" and d != k:
        raise ValueError(f"{name}: student.projection=none needs equal dimensions, but the student has {d} and the teacher {k}")
    head = {"lstsq": lambda: lstsq_from_sums(total, cfg.head_ridge), "random": lambda: torch.nn.Linear(d, k), "none": lambda: None}[
        cfg.projection
    ]()
    return LinearMaps(lstsq_from_sums(total), head, (d, k))
