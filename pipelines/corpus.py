"""Corpus recipe: parallel text -> cleaned, split, Parquet (every row kept or rejected with a reason).

    rows in  --flat_map-->  pairs  --map_batches(clean)-->  reason  --map_batches(split)-->  Parquet
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from mdistill.assets import debian_help_root, source_identity
from mdistill.config import CorpusConfig
from mdistill.corpus.clean import assign_split, clean_table, normalize_lang
from mdistill.corpus.sources import libreoffice_file_pairs, list_help_files

CORPUS_FORMAT = 1  # bump when extraction or cleaning code changes what a corpus holds


def _split_batch(batch: pa.Table, dev_fraction: float, train_fraction: float) -> pa.Table:
    split = [assign_split(en, dev_fraction, train_fraction) for en in batch.column("en").to_pylist()]
    return batch.append_column("split", pa.array(split, pa.string()))


def _normalize_langs(batch: dict) -> dict:
    return {**batch, "lang": [normalize_lang(str(x)) for x in batch["lang"]]}


def corpus_fingerprint(cfg: CorpusConfig, source: str) -> str:
    """The corpus is a pure function of its inputs and the cleaning/split settings."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"config": cfg.model_dump(), "source": source, "version": CORPUS_FORMAT}, sort_keys=True).encode())
    return h.hexdigest()


def _file_identity(paths: list[str]) -> str:
    files = sorted(p for x in paths for p in ([Path(x)] if Path(x).is_file() else Path(x).rglob("*.parquet")))
    return json.dumps([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def build_corpus(cfg: CorpusConfig, cache_dir: Path) -> tuple[Path, dict, bool]:
    """``<cache>/corpora/<fingerprint>/pairs/*.parquet`` (columns en, lang, text, source, reason,
    split) and its manifest: rows in, kept, rejected by reason, per language. Built once per
    fingerprint; returns (folder, manifest, reused)."""
    if cfg.source == "debian-libreoffice":
        help_root = debian_help_root(cfg.langs, cache_dir)
        source = source_identity(help_root)
    else:
        source = _file_identity(cfg.paths)
    out_dir = cache_dir / "corpora" / corpus_fingerprint(cfg, source)
    if (out_dir / "manifest.json").exists():
        return out_dir, json.loads((out_dir / "manifest.json").read_text()), True

    if cfg.source == "debian-libreoffice":
        files = list_help_files(help_root, cfg.max_files)
        ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=min(len(files), 64))
        ds = ds.flat_map(libreoffice_file_pairs, fn_kwargs={"help_root": str(help_root), "langs": cfg.langs})
    else:
        ds = ray.data.read_parquet(cfg.paths, columns=["en", "lang", "text"]).map_batches(_normalize_langs)

    ds = ds.map_batches(
        clean_table,
        fn_kwargs=dict(min_words=cfg.min_words, max_words=cfg.max_words, max_chars=cfg.max_chars, max_length_ratio=cfg.max_length_ratio),
        batch_format="pyarrow",
    )
    ds = ds.map_batches(partial(_split_batch, dev_fraction=cfg.dev_fraction, train_fraction=cfg.train_fraction), batch_format="pyarrow")
    # A private temporary folder per build: two runs building the same corpus must not share one.
    tmp = out_dir.with_name(f"{out_dir.name}.{uuid.uuid4().hex}.tmp")
    ds.write_parquet(str(tmp / "pairs"))
    manifest = corpus_manifest(tmp / "pairs")
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    try:
        tmp.rename(out_dir)  # complete or absent: a killed build is never reused
    except OSError:  # another build of the same fingerprint finished first; it holds the same rows
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir, manifest, False


def corpus_manifest(pairs_dir: Path) -> dict:
    """Counts per language: rows in, kept, rejected by reason, kept per split (reads two columns)."""
    t = pq.read_table(pairs_dir, columns=["lang", "reason", "split"])
    out: dict = {}
    for lang in sorted(set(t.column("lang").to_pylist())):
        s = t.filter(pc.equal(t.column("lang"), lang))
        reasons = s.column("reason")
        kept = s.filter(pc.is_null(reasons))
        rej = s.filter(pc.is_valid(reasons)).column("reason").value_counts().to_pylist()
        splits = kept.column("split").value_counts().to_pylist()
        out[lang] = {
            "rows_in": s.num_rows,
            "kept": kept.num_rows,
            "rejected": {r["values"]: r["counts"] for r in rej},
            "kept_by_split": {r["values"]: r["counts"] for r in splits},
        }
        assert out[lang]["rows_in"] == out[lang]["kept"] + sum(out[lang]["rejected"].values())
    return out
