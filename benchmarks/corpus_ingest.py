"""Benchmark: ingest + clean a generated parallel TSV corpus, mdistill (Ray Data) vs pandas.

    python benchmarks/corpus_ingest.py --rows 500000 2000000 --out benchmarks/results/corpus_ingest.json

For each size, a TSV of synthetic en/de pairs (with ~3% bad rows: blank lines, wrong column
counts, duplicates, identical sides, format strings, too short) is generated once, then:
- mdistill: ``build_corpus`` on a fresh local Ray instance (``num_cpus=2``), start-up included;
- pandas: ``read_csv`` + the same normalisation and filters + exact dedup + hash split, in one process.
Each runs in its own subprocess. Peak memory, sampled every 0.2 s over the process and all its
children (for mdistill: the driver, raylet, GCS and every Ray worker): the sum of USS (memory
unique to each process), the sum of RSS (counts the shared object store once per process that maps
it), the largest single process, and the driver; pandas also reports its ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

from memory import run_child  # benchmarks/memory.py (run from the repo root: python benchmarks/...)

WORDS_EN = [
    "the",
    "file",
    "open",
    "save",
    "cell",
    "sheet",
    "table",
    "chart",
    "page",
    "text",
    "format",
    "style",
    "print",
    "window",
    "menu",
    "button",
    "dialog",
    "select",
    "insert",
    "delete",
    "copy",
    "paste",
    "value",
    "row",
    "column",
    "number",
    "data",
    "formula",
    "function",
]
WORDS_DE = [
    "die",
    "Datei",
    "öffnen",
    "speichern",
    "Zelle",
    "Blatt",
    "Tabelle",
    "Diagramm",
    "Seite",
    "Text",
    "Format",
    "Vorlage",
    "drucken",
    "Fenster",
    "Menü",
    "Schaltfläche",
    "Dialog",
    "auswählen",
    "einfügen",
    "löschen",
    "kopieren",
    "Wert",
    "Zeile",
    "Spalte",
    "Zahl",
    "Daten",
    "Formel",
    "Funktion",
]


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        recent: list[str] = []
        for i in range(rows):
            r = rng.random()
            if r < 0.005:
                f.write("\n")
            elif r < 0.01:
                f.write("only one column here\n")
            elif r < 0.02 and recent:
                f.write(rng.choice(recent))
            elif r < 0.025:
                f.write("%s: %d\t%s: %d\n")
            elif r < 0.03:
                f.write("Same text\tSame text\n")
            else:
                n = rng.randint(2, 20)
                en = " ".join(rng.choice(WORDS_EN) for _ in range(n)).capitalize() + f" {i}."
                de = " ".join(rng.choice(WORDS_DE) for _ in range(n)).capitalize() + f" {i}."
                line = f"{en}\t{de}\n"
                f.write(line)
                if i % 97 == 0:
                    recent = (recent + [line])[-50:]


def run_mdistill(tsv: Path, work: Path) -> dict:
    import pyarrow.parquet as pq
    import ray

    from mdistill.config import load_config
    from mdistill.stages.corpus import build_corpus

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    t_init = time.perf_counter() - t0
    cfg = load_config(None, [f"corpus.sources=[{{format: tsv, paths: [{tsv}], lang: de}}]", "corpus.langs=[de]"]).corpus
    corpus = build_corpus(cfg, work / "cache", work / "corpus")
    out, m = corpus.dir, corpus.manifest
    wall = time.perf_counter() - t0
    ray.shutdown()
    kept = sum(pq.ParquetFile(f).metadata.num_rows for f in (out / "pairs").glob("*.parquet"))
    return {"wall_s": wall, "ray_init_s": t_init, "rows_in": m["rows_in"], "kept": kept, "rejected": m["rejected"]}


def run_pandas(tsv: Path) -> dict:
    import hashlib
    import resource

    import pandas as pd

    from mdistill.corpus.clean import _CTRL, _FORMAT  # the same patterns (RE2 syntax is Python-compatible here)

    ctrl = _CTRL.replace(r"\x{200b}", "\u200b").replace(r"\x{feff}", "\ufeff")
    fmt = _FORMAT
    t0 = time.perf_counter()
    df = pd.read_csv(
        tsv,
        sep="\t",
        header=None,
        names=["en", "text"],
        dtype=str,
        quoting=3,
        keep_default_na=False,
        on_bad_lines="skip",
        skip_blank_lines=False,
        encoding_errors="replace",
    )
    for c in ("en", "text"):
        df[c] = df[c].fillna("").str.normalize("NFC").str.replace(ctrl, " ", regex=True).str.replace(r"\s+", " ", regex=True).str.strip()
    reason = pd.Series([None] * len(df), dtype=object)

    def mark(name: str, failed) -> None:
        reason[reason.isna() & failed] = name

    n_en, n_tx = df.en.str.len(), df.text.str.len()
    mark("empty", (n_en == 0) | (n_tx == 0))
    mark("too_many_chars", (n_en > 1000) | (n_tx > 1000))
    letters = r"[^\W\d_]"
    mark(
        "format_only",
        ~(df.en.str.replace(fmt, "", regex=True).str.contains(letters) & df.text.str.replace(fmt, "", regex=True).str.contains(letters)),
    )
    words = df.en.str.count(r"\S+")
    mark("too_short", words < 3)
    mark("too_long", words > 64)
    mark("identical", df.en == df.text)
    b_en, b_tx = df.en.str.encode("utf-8").str.len(), df.text.str.encode("utf-8").str.len()
    mark("length_ratio", pd.concat([b_en, b_tx], axis=1).max(axis=1) / pd.concat([b_en, b_tx], axis=1).min(axis=1).clip(lower=1) > 3.0)
    kept = reason.isna()
    dup = kept & df.duplicated(["en", "text"])
    mark("duplicate", dup)
    kept = reason.isna()
    u = df.en[kept].map(lambda s: int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") / 2**64)
    split = pd.cut(u, [0, 0.015, 0.03, 1.0], labels=["dev", "test", "train"], include_lowest=True)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "rows_in": len(df),
        "kept": int(kept.sum()),
        "rejected": reason.value_counts().to_dict(),
        "splits": split.value_counts().to_dict(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def in_subprocess(mode: str, tsv: Path, work: Path) -> dict:
    """Run one measurement in a fresh interpreter; sample its process tree's memory meanwhile."""
    return run_child([__file__, "--child", mode, str(tsv), str(work)], mode)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[500_000, 2_000_000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mdistill-bench-corpus"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", nargs=3, metavar=("MODE", "TSV", "WORK"))
    a = ap.parse_args()
    if a.child:
        mode, tsv, work = a.child[0], Path(a.child[1]), Path(a.child[2])
        res = run_mdistill(tsv, work) if mode == "mdistill" else run_pandas(tsv)
        print(json.dumps(res, default=str))
        return
    results = []
    for rows in a.rows:
        a.work.mkdir(parents=True, exist_ok=True)
        tsv = a.work / f"pairs-{rows}.tsv"
        if not tsv.exists():
            generate(tsv, rows)
        work = a.work / f"run-{rows}-{int(time.time())}"
        md = in_subprocess("mdistill", tsv, work)
        pd_ = in_subprocess("pandas", tsv, work)
        assert md["rows_in"] == rows, (md["rows_in"], rows)
        r = {
            "rows": rows,
            "file_mb": round(tsv.stat().st_size / 2**20, 1),
            "mdistill": md,
            "pandas": pd_,
            "rows_per_s": {"mdistill": rows / md["wall_s"], "pandas": rows / pd_["wall_s"]},
        }
        r["ratio_mdistill_over_pandas"] = r["rows_per_s"]["mdistill"] / r["rows_per_s"]["pandas"]
        results.append(r)
        print(json.dumps(r, default=str), flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(
            json.dumps(
                {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} CPUs", "results": results}, indent=2, default=str
            )
        )


if __name__ == "__main__":
    main()
