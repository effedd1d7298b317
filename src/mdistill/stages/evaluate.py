"""Evaluation stage (no Ray): per language, the run's models on the dev sample (in-domain) and the
held-out sample (out-of-domain: whole sources never trained on), from vectors the
run already has (the teacher's cache, the frozen pass, the trainer's final dev vectors), through
``evaluation.table`` (the evaluator classes' ``compute``).

Models: the teacher alone, and per student the untrained student, the linear map (least squares
from the untrained student's pooled output to the teacher's vectors, fitted on the training rows)
and the trained student.

``evaluate_files`` (``mdistill eval``): any sentence-transformers models on a pairs file, the
teacher evaluated too as a baseline in the same table.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from mdistill.evaluation.table import metrics_table, summarize
from mdistill.report.schema import EvalReport, ModelSpec
from mdistill.stages.student import LinearMaps, TrainingSet
from mdistill.stages.train import Trained
from mdistill.teacher.cache import EmbeddingCache, embedding_matrix


def teacher_dev_vectors(dev: pa.Table, teacher: EmbeddingCache) -> dict[str, np.ndarray]:
    """The teacher's vector of every English source and translation of the dev sample."""
    texts = pc.unique(pa.concat_arrays([dev.column("en").combine_chunks(), dev.column("text").combine_chunks()])).to_pylist()
    return dict(zip(texts, teacher.lookup(texts)))


def student_dev_vectors(ts: TrainingSet, maps: LinearMaps, trained: Trained) -> dict[str, dict[str, np.ndarray]]:
    """``untrained``, ``linear_map`` and ``student``: text -> vector over the dev and held-out rows
    of the training set."""
    dev = ts.eval_table(["key", "text", "pooled"])
    texts, keys = dev.column("text").to_pylist(), dev.column("key").to_pylist()
    pooled = np.array(embedding_matrix(dev.column("pooled")))  # writable: torch.from_numpy below
    with torch.no_grad():
        linear = maps.linear_map(torch.from_numpy(pooled)).numpy()
    if trained.dev_vectors is None:
        raise RuntimeError(f"the final checkpoint {trained.checkpoint.path} holds no dev vectors")
    by_key = dict(zip(trained.dev_vectors.column("key").to_pylist(), embedding_matrix(trained.dev_vectors.column("embedding"))))
    return {
        "untrained": dict(zip(texts, pooled / np.linalg.norm(pooled, axis=1, keepdims=True))),  # the model normalizes
        "linear_map": dict(zip(texts, linear)),
        "student": {t: by_key[k] for t, k in zip(texts, keys)},
    }


# -- mdistill eval ---------------------------------------------------------------------------------


def read_table(path: str | Path) -> pa.Table:
    """A Parquet file or folder, a TSV/CSV file with a header, or JSON lines (every value a string but STS scores)."""
    import pandas as pd
    import pyarrow.parquet as pq

    p = Path(path)
    if p.is_dir() or p.suffix == ".parquet":
        return pq.read_table(p)
    if p.suffix in (".tsv", ".csv", ".txt"):
        sep = "," if p.suffix == ".csv" else "\t"
        df = pd.read_csv(p, sep=sep, keep_default_na=False, quoting=3 if sep == "\t" else 0, dtype=str)
    elif p.suffix in (".jsonl", ".json", ".ndjson"):
        df = pd.read_json(p, lines=p.suffix != ".json", dtype=False)
    else:
        raise ValueError(f"{p}: expected .parquet, .tsv, .csv, .jsonl or a Parquet folder")
    return pa.Table.from_pandas(df, preserve_index=False)


def load_pairs(
    data: str | Path, *, split: str | None = None, langs: list[str] | None = None, max_per_lang: int | None = None
) -> tuple[pa.Table, str | None]:
    """Evaluation pairs (en, lang, text) and the split they come from. A corpus folder built by
    ``mdistill corpus build`` is read from its ``pairs/``; with a ``split`` column, ``split``
    (default ``test``) is kept. Within a language, repeated English sources or translations are
    dropped (retrieval needs one right answer)."""
    p = Path(data)
    t = read_table(p / "pairs" if (p / "pairs").is_dir() else p)
    missing = {"en", "lang", "text"} - set(t.column_names)
    if missing:
        raise ValueError(f"{data}: missing column(s) {sorted(missing)} (have {t.column_names})")
    if "split" in t.column_names:
        split = split or "test"
        have = sorted(set(t.column("split").to_pylist()))
        t = t.filter(pc.equal(t.column("split"), split))
        if not t.num_rows:
            raise ValueError(f"{data}: no rows in split {split!r} (splits: {have})")
    if langs:
        t = t.filter(pc.is_in(t.column("lang"), pa.array(langs)))
    rows, seen_en, seen_xx, per_lang = [], set(), set(), {}
    for en, lang, text in zip(*(t.column(c).to_pylist() for c in ("en", "lang", "text"))):
        if (lang, en) in seen_en or (lang, text) in seen_xx or (max_per_lang and per_lang.get(lang, 0) >= max_per_lang):
            continue
        seen_en.add((lang, en))
        seen_xx.add((lang, text))
        per_lang[lang] = per_lang.get(lang, 0) + 1
        rows.append((str(en), str(lang), str(text)))
    if not rows:
        raise ValueError(f"{data}: no pairs left (langs={langs})")
    en, lang, text = zip(*rows)
    return pa.table({"en": list(en), "lang": list(lang), "text": list(text)}), split


def _label(spec: str, taken: set[str]) -> str:
    name = Path(spec).name if Path(spec).expanduser().exists() else spec
    label, i = name, 2
    while label in taken:
        label, i = f"{name}#{i}", i + 1
    return label


def evaluate_files(
    models: list[str],
    data: str | Path,
    *,
    teacher: str,
    langs: list[str] | None = None,
    split: str | None = None,
    sts: str | Path | None = None,
    batch_size: int = 64,
    max_per_lang: int | None = None,
    cache_dir: str | Path = "~/.cache/mdistill",
    device: str | None = None,
) -> EvalReport:
    """Evaluate sentence-transformers ``models`` (packaged names, paths or HF ids) and the
    ``teacher`` on the pairs in ``data``; teacher-space metrics use the teacher's English vectors
    (``None`` for a model whose dimension differs). ``sts``: a file with s1, s2, score for STS."""
    from mdistill.assets import resolve_model
    from mdistill.encode import load_sentence_transformer
    from mdistill.evaluation.functional import embed
    from mdistill.evaluation.STSEvaluator import STSEvaluator

    cache = Path(cache_dir).expanduser().resolve()
    pairs, split = load_pairs(data, split=split, langs=langs, max_per_lang=max_per_lang)
    sts_t = read_table(sts) if sts else None
    if sts_t is not None and not {"s1", "s2", "score"} <= set(sts_t.column_names):
        raise ValueError(f"{sts}: an STS file needs columns s1, s2, score (have {sts_t.column_names})")
    texts = list(dict.fromkeys([*pairs.column("en").to_pylist(), *pairs.column("text").to_pylist()]))

    specs = {"teacher": teacher}
    for m in models:
        if m != teacher:
            specs[_label(m, set(specs))] = m
    vectors, resolved, dims, sts_res = {}, {}, {}, {}
    for label, spec in specs.items():
        resolved[label] = resolve_model(spec, cache)
        model = load_sentence_transformer(resolved[label], device=device)
        vecs = embed(model, texts, batch_size=batch_size)
        vectors[label], dims[label] = dict(zip(texts, vecs)), vecs.shape[1]
        if sts_t is not None:
            s1, s2 = sts_t.column("s1").to_pylist(), sts_t.column("s2").to_pylist()
            sts_res[label] = STSEvaluator(s1, s2, [float(x) for x in sts_t.column("score").to_pylist()], batch_size=batch_size)(model)
        del model

    table = metrics_table(pairs, vectors, vectors["teacher"])
    return EvalReport(
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        data=str(data),
        split=split,
        teacher=teacher,
        models={label: ModelSpec(spec=specs[label], path=resolved[label], dim=dims[label]) for label in specs},
        baselines=["teacher"],
        metrics=table,
        summary=summarize(table),
        sts={"file": str(sts), "n": sts_t.num_rows, "models": sts_res} if sts_res else None,
    )
