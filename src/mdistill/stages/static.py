"""Static-student stages (``pipelines/static.py``): the source transformer, Model2Vec distillation
with corpus SIF weights, the training rows, the vectors evaluated, and the checked export.

Distillation and the source-transformer baseline run in Ray tasks (they load a transformer the
driver never holds); the corpus token counts stream through Ray Data, one count vector per block.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.train
from ray.data.expressions import col

from mdistill.config import RunConfig, StaticConfig, StudentConfig
from mdistill.log import get_logger
from mdistill.report.schema import ExportCheck
from mdistill.stages.cache_pass import join_files
from mdistill.stages.select import Selection
from mdistill.stages.student import streamed_sums
from mdistill.stages.train import SETTINGS_FILE
from mdistill.teacher.cache import EmbeddingCache, embedding_matrix

log = get_logger("static")
EXPORT_TOLERANCE = 1e-5  # max abs diff between the exported model's loaders and the evaluated vectors


@dataclass(frozen=True)
class StaticInit:
    """The static model training starts from: distilled token vectors + corpus SIF weights."""

    path: Path  # model2vec directory
    source: str  # the transformer its token vectors come from
    steps: list[dict] = field(default_factory=list)  # how the source was built, then distil + sif
    vocab: int = 0
    dim: int = 0


def source_model(cfg: RunConfig, data: Selection) -> dict:
    """``{"path", "steps"}`` of the transformer the token vectors come from: ``static.from_model``
    as it is, or the ``student:`` section built (vocabulary trimming / layer pruning applied)."""
    from mdistill.models.builder import build_student
    from mdistill.stages.student import corpus_token_ids

    if cfg.static.from_model is not None:
        return build_student(StudentConfig(model=cfg.static.from_model), cfg.cache_path)
    return build_student(
        cfg.student, cfg.cache_path, used_ids=lambda d, p: corpus_token_ids(data.student_texts(), d, p), corpus_key=data.fingerprint
    )


@ray.remote(num_cpus=1)
def _distil(source: str, out: str) -> tuple[int, int]:
    from mdistill.models.static import distil_static

    static = distil_static(source)
    static.save_pretrained(out)
    return static.embedding.shape


def _count_block(batch: pa.Table, *, tokenizer_path: str, vocab: int) -> pa.Table:
    from tokenizers import Tokenizer

    from mdistill.models.static import token_counts

    counts = token_counts(Tokenizer.from_file(tokenizer_path), batch.column("text").to_pylist(), vocab)
    return pa.table({"counts": [counts.tobytes()]})


def corpus_counts(texts: ray.data.Dataset, tokenizer_path: Path, vocab: int) -> np.ndarray:
    """Token counts of ``texts`` (a ``text`` column) with the static model's tokenizer, summed over
    Ray Data blocks: the driver holds one vocabulary-sized vector at a time."""
    total = np.zeros(vocab, dtype=np.int64)
    blocks = texts.map_batches(
        partial(_count_block, tokenizer_path=str(tokenizer_path), vocab=vocab), batch_format="pyarrow", batch_size=8192
    )
    for batch in blocks.iter_batches(batch_size=1, batch_format="pyarrow"):
        total += np.frombuffer(batch.column("counts")[0].as_py(), dtype=np.int64)
    return total


def train_texts(data: Selection) -> ray.data.Dataset:
    """The sentences the student trains on (English sources and translations of the train split):
    the token frequencies come from these, never from the evaluation rows."""
    return data.rows().filter(expr=col("split") == "train").select_columns(["text"])


def build_static(cfg: StaticConfig, source: dict, data: Selection, out_dir: Path) -> StaticInit:
    """Distil ``source`` into token vectors, then weigh them by SIF from the corpus's token counts."""
    from model2vec import StaticModel

    from mdistill.models.static import with_sif_weights

    distilled = out_dir / "distilled"
    shutil.rmtree(distilled, ignore_errors=True)
    vocab, dim = ray.get(_distil.remote(source["path"], str(distilled)))
    counts = corpus_counts(train_texts(data), distilled / "tokenizer.json", vocab)
    static = with_sif_weights(StaticModel.from_pretrained(str(distilled)), counts, cfg.sif_a)
    init = out_dir / "init"
    shutil.rmtree(init, ignore_errors=True)
    static.save_pretrained(str(init))
    seen = int((counts > 0).sum())
    log.info("static: %d pieces x %d dims from %s; %d tokens counted, %d pieces seen", vocab, dim, source["path"], counts.sum(), seen)
    steps = [*source["steps"], {"step": "distil_static", "pieces": vocab, "dim": dim},
             {"step": "sif_weights", "a": cfg.sif_a, "tokens_counted": int(counts.sum()), "pieces_seen": seen}]  # fmt: skip
    return StaticInit(init, source["path"], steps, vocab, dim)


def training_rows(data: Selection, teacher: EmbeddingCache) -> tuple[ray.data.Dataset, int]:
    """``text`` + ``target`` (the teacher's vector of its English source) of every training
    sentence, joined on Ray Data; and how many there are."""
    rows = data.rows().filter(expr=col("split") == "train")
    joined = join_files(rows, [str(p) for p in teacher.readable_shards()], key="key", left_key="en_key", columns=["embedding"])
    n = data.counts.train_english + sum(data.counts.train_pairs.values())
    return joined.rename_columns({"embedding": "target"}).select_columns(["text", "target"]), n


@lru_cache(maxsize=2)
def _static_model(path: str):
    from model2vec import StaticModel

    return StaticModel.from_pretrained(path)


def _unnormalised_and_target(batch: pa.Table, *, path: str) -> tuple[np.ndarray, np.ndarray]:
    # the weighted token mean before normalisation: the quantity a token-level map acts on
    x = _static_model(path).encode(batch.column("text").to_pylist(), normalize=False, use_multiprocessing=False)
    return x, embedding_matrix(batch.column("target"))


def fit_map(init: StaticInit, rows: ray.data.Dataset, ridge: float, out_dir: Path) -> StaticInit:
    """Least squares from the distilled model's (unnormalised) sentence vectors to the teacher
    vectors of the training rows, from sums streamed over Ray Data, folded into the token vectors
    (``with_linear_map``): the linear-map baseline, and where training starts. The source
    transformer's space is not the teacher's, so without it training starts near-orthogonal."""
    from model2vec import StaticModel

    from mdistill.models.split import linear_from_sums
    from mdistill.models.static import with_linear_map

    sums = streamed_sums(rows.select_columns(["text", "target"]), partial(_unnormalised_and_target, path=str(init.path)))
    w = linear_from_sums(sums, ridge)
    mapped = with_linear_map(StaticModel.from_pretrained(str(init.path)), w)
    path = out_dir / "linear_map"
    shutil.rmtree(path, ignore_errors=True)
    mapped.save_pretrained(str(path))
    log.info("static: linear map %dx%d fitted on %d rows (ridge %g)", *w.shape, int(sums["n"]), ridge)
    steps = [*init.steps, {"step": "linear_map", "rows": int(sums["n"]), "ridge": ridge}]
    return StaticInit(path, init.source, steps, init.vocab, w.shape[1])


def fresh_or_resume(run_path: Path, loop, teacher_fingerprint: str) -> None:
    """Keep a stopped run's checkpoints (Ray Train resumes from them) only if training would be
    the same: the loop settings, the initial model's bytes, the teacher's vectors."""
    digest = hashlib.blake2b(digest_size=16)
    for f in sorted(Path(loop.init_path).glob("*.safetensors")):
        digest.update(f.read_bytes())
    wanted = json.dumps(
        {"loop": loop.model_dump(mode="json", exclude={"threads", "tracking"}), "init": digest.hexdigest(), "teacher": teacher_fingerprint},
        sort_keys=True,
    )
    stamp = run_path / SETTINGS_FILE
    if run_path.exists() and (not loop.train.resume or not stamp.exists() or stamp.read_text() != wanted):
        shutil.rmtree(run_path)
    run_path.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wanted)


def trained_model(checkpoint: ray.train.Checkpoint, out: Path) -> Path:
    """The final checkpoint's model2vec directory, copied out of Ray Train's storage."""
    from mdistill.training.static_loop import MODEL_DIR

    shutil.rmtree(out, ignore_errors=True)
    with checkpoint.as_directory() as d:
        shutil.copytree(Path(d) / MODEL_DIR, out)
    return out


def eval_texts(data: Selection) -> list[str]:
    """Every English source and translation of the dev and held-out samples, once."""
    t = pa.concat_tables([data.dev, data.heldout])
    return pc.unique(pa.concat_arrays([t.column("en").combine_chunks(), t.column("text").combine_chunks()])).to_pylist()


def static_vectors(path: str | Path, texts: list[str]) -> dict[str, np.ndarray]:
    from model2vec import StaticModel

    return dict(zip(texts, StaticModel.from_pretrained(str(path)).encode(texts)))


@ray.remote(num_cpus=1)
def transformer_vectors(path: str, texts: list[str], batch_size: int) -> dict[str, np.ndarray]:
    """The source transformer's own vectors (its prompt and max length as exported)."""
    from mdistill.encode import load_sentence_transformer

    st = load_sentence_transformer(path, device="cpu")
    return dict(zip(texts, st.encode(texts, batch_size=batch_size, convert_to_numpy=True)))


def export_static(trained: Path, out: Path, ours: dict[str, np.ndarray], check_rows: int = 100) -> tuple[ExportCheck, int]:
    """Copy the trained model2vec directory to ``out`` and check that model2vec and
    sentence-transformers both load it and give the vectors mdistill evaluated."""
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(trained, out)
    texts = list(ours)[:check_rows]
    want = np.stack([ours[t] for t in texts])
    m2v = StaticModel.from_pretrained(str(out))
    st = SentenceTransformer(str(out), device="cpu")
    diff = max(float(np.abs(m2v.encode(texts) - want).max()), float(np.abs(st.encode(texts, convert_to_numpy=True) - want).max()))
    if diff > EXPORT_TOLERANCE:  # the loaders disagree with what was evaluated: say so loudly, the report keeps the number
        log.warning(
            "%s: model2vec / sentence-transformers vectors differ from the evaluated ones by %.2e (> %.0e)", out, diff, EXPORT_TOLERANCE
        )
    return ExportCheck(path=str(out), checked=len(texts), max_abs_diff=diff), int(m2v.embedding.size)
