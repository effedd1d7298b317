"""Evaluation recipes (no Ray).

``evaluate_models``: the run's table, per language on the dev split, from cached vectors. Models:
the teacher alone, the untrained student, the linear map (least squares from the frozen student's
embeddings to the teacher's, fitted on the training pairs) and the trained student(s).

``evaluate_files`` (``mdistill eval``): any sentence-transformers models on a pairs file, the
teacher evaluated too as a baseline in the same table; writes ``eval.json``, ``eval.md`` and
``eval_metrics.png``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from mdistill.evaluation.metrics import embed, language_metrics, summarize
from mdistill.evaluation.STSEvaluator import STSEvaluator


def evaluate_models(
    dev: pd.DataFrame, embeddings: dict[str, dict[str, np.ndarray]], teacher_en: dict[str, np.ndarray], *, bitext: bool = True
) -> dict:
    """``dev``: one row per (en, lang, text) dev pair. ``embeddings[model]`` maps each of the
    texts (English and translations) to its vector; ``teacher_en`` maps English to the teacher's
    vector. Returns ``{lang: {"n": n, model: metrics}}`` (``language_metrics``; ``bitext``: with
    ``bitext_f1``)."""
    table: dict = {}
    for lang, rows in dev.groupby("lang", sort=True):
        t_en = np.stack([teacher_en[e] for e in rows["en"]])
        table[lang] = {"n": len(rows)}
        for name, vecs in embeddings.items():
            xx = np.stack([vecs[x] for x in rows["text"]])
            en = np.stack([vecs[e] for e in rows["en"]])
            table[lang][name] = language_metrics(xx, en, t_en, bitext=bitext)
    return table


def beats_baselines(
    table: dict, model: str = "student", baselines=("teacher", "untrained", "linear_map"), metric: str = "teacher_space_top1"
) -> dict[str, bool]:
    def v(x):
        return -np.inf if x is None else x

    return {lang: all(v(row[model][metric]) > v(row[b][metric]) for b in baselines if b in row) for lang, row in table.items()}


# -- mdistill eval ---------------------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """A Parquet file or folder, a TSV/CSV file with a header, or JSON lines."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pandas()
    if p.suffix in (".tsv", ".csv", ".txt"):
        sep = "," if p.suffix == ".csv" else "\t"
        return pd.read_csv(p, sep=sep, keep_default_na=False, quoting=3 if sep == "\t" else 0, dtype=str)
    if p.suffix in (".jsonl", ".json", ".ndjson"):
        return pd.read_json(p, lines=p.suffix != ".json", dtype=False)
    raise ValueError(f"{p}: expected .parquet, .tsv, .csv, .jsonl or a Parquet folder")


def load_pairs(
    data: str | Path, *, split: str | None = None, langs: list[str] | None = None, max_per_lang: int | None = None
) -> pd.DataFrame:
    """Evaluation pairs (en, lang, text). A corpus folder built by ``mdistill corpus build`` is read
    from its ``pairs/``; with a ``split`` column, ``split`` (default ``test``) is kept. Within a
    language, repeated English sources or translations are dropped (retrieval needs one right answer)."""
    p = Path(data)
    df = read_table(p / "pairs" if (p / "pairs").is_dir() else p)
    missing = {"en", "lang", "text"} - set(df.columns)
    if missing:
        raise ValueError(f"{data}: missing column(s) {sorted(missing)} (have {list(df.columns)})")
    if "split" in df.columns:
        split = split or "test"
        have = sorted(df["split"].unique())
        df = df[df["split"] == split]
        if df.empty:
            raise ValueError(f"{data}: no rows in split {split!r} (splits: {have})")
    if langs:
        df = df[df["lang"].isin(langs)]
    df = df[["en", "lang", "text"]].drop_duplicates(["lang", "en"]).drop_duplicates(["lang", "text"])
    if max_per_lang:
        df = df.groupby("lang", sort=True).head(max_per_lang)
    if df.empty:
        raise ValueError(f"{data}: no pairs left (langs={langs})")
    df = df.reset_index(drop=True)
    df.attrs["split"] = split  # None: the file has no split column
    return df


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
    out: str | Path | None = None,
    langs: list[str] | None = None,
    split: str | None = None,
    sts: str | Path | None = None,
    batch_size: int = 64,
    max_per_lang: int | None = None,
    cache_dir: str | Path = "~/.cache/mdistill",
    device: str | None = None,
) -> dict:
    """Evaluate sentence-transformers ``models`` (packaged names, paths or HF ids) and the
    ``teacher`` on the pairs in ``data``; teacher-space metrics use the teacher's English vectors
    (``None`` for a model whose dimension differs). ``sts``: a file with s1, s2, score for STS
    Spearman. Writes ``eval.json``, ``eval.md``, ``eval_metrics.png`` to ``out`` when given."""
    from mdistill.assets import resolve_model
    from mdistill.encode import load_sentence_transformer

    cache = Path(cache_dir).expanduser().resolve()
    pairs = load_pairs(data, split=split, langs=langs, max_per_lang=max_per_lang)
    sts_df = read_table(sts) if sts else None
    if sts_df is not None and not {"s1", "s2", "score"} <= set(sts_df.columns):
        raise ValueError(f"{sts}: an STS file needs columns s1, s2, score (have {list(sts_df.columns)})")
    texts = list(dict.fromkeys([*pairs["en"], *pairs["text"]]))

    specs = {"teacher": teacher}
    for m in models:
        if m != teacher:
            specs[_label(m, set(specs))] = m
    vectors, resolved, dims = {}, {}, {}
    for label, spec in specs.items():
        resolved[label] = resolve_model(spec, cache)
        model = load_sentence_transformer(resolved[label], device=device)
        vecs = embed(model, texts, batch_size=batch_size)
        vectors[label], dims[label] = dict(zip(texts, vecs)), vecs.shape[1]
        if sts_df is not None:
            vectors[label]["__sts__"] = STSEvaluator(list(sts_df.s1), list(sts_df.s2), sts_df.score.astype(float), batch_size=batch_size)(
                model
            )
        del model
    sts_res = {label: v.pop("__sts__") for label, v in vectors.items() if "__sts__" in v}

    table = evaluate_models(pairs, vectors, vectors["teacher"])
    result = {
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": str(data),
        "split": pairs.attrs.get("split"),
        "teacher": teacher,
        "models": {label: {"spec": specs[label], "path": resolved[label], "dim": dims[label]} for label in specs},
        "baselines": ["teacher"],
        "metrics": table,
        "summary": summarize(table),
    }
    if sts_res:
        result["sts"] = {"file": str(sts), "n": len(sts_df), **{label: r for label, r in sts_res.items()}}
    if out is not None:
        write_eval(Path(out), result)
    return result


def eval_markdown(result: dict) -> str:
    from mdistill.plots import model_order
    from mdistill.report import metrics_markdown, summary_markdown

    models = model_order(result["metrics"], result.get("baselines", ()))
    md = [
        f"# mdistill eval: `{result['data']}`" + (f" (split {result['split']})" if result.get("split") else ""),
        "",
        f"Teacher (baseline; its English vectors are the index for teacher-space top-1): `{result['teacher']}`.",
        "",
        "| model | spec | dim |",
        "|---|---|---|",
        *[f"| {k} | `{v['spec']}` | {v['dim']} |" for k, v in result["models"].items()],
        "",
        "## Summary (mean over languages)",
        "",
        summary_markdown(result["summary"], models),
        "",
        "## Per language",
        "",
        metrics_markdown(result["metrics"], models),
        "",
        "`–`: undefined (the model's dimension differs from the teacher's). Bitext F1: margin-based mining (k=4) on a pool of "
        "half the pairs plus distractors on both sides.",
        "",
        "![metrics per language](eval_metrics.png)",
    ]
    if result.get("sts"):
        md += ["", f"## STS (`{result['sts']['file']}`, {result['sts']['n']} pairs)", "", "| model | Spearman | Pearson |", "|---|---|---|"]
        md += [f"| {k} | {v['spearman_cosine']:.4f} | {v['pearson_cosine']:.4f} |" for k, v in result["sts"].items() if isinstance(v, dict)]
    return "\n".join(md) + "\n"


def write_eval(out: Path, result: dict) -> None:
    from mdistill.plots import metrics_by_language

    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2, default=str))
    metrics_by_language(
        result["metrics"],
        out / "eval_metrics.png",
        metrics=("teacher_space_top1", "translation_top1_xx2en", "bitext_f1"),
        baselines=result.get("baselines", ()),
        title=f"mdistill eval: {Path(result['data']).name}",
    )
    (out / "eval.md").write_text(eval_markdown(result))
