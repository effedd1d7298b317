"""The corpus manifest: rows in, kept, and rejected by reason, per language, source and file.

Built from the per-bucket counts of the finishing pass, and checked against an independent count:
the rows the readers staged (Parquet metadata) must equal pairs + quarantine written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable


def _blank() -> dict:
    return {"rows_in": 0, "kept": 0, "rejected": defaultdict(int), "kept_by_split": defaultdict(int)}


def _add(node: dict, reason: str | None, split: str | None, rows: int) -> None:
    node["rows_in"] += rows
    if reason is None:
        node["kept"] += rows
        node["kept_by_split"][split or "none"] += rows
    else:
        node["rejected"][reason] += rows


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    return x


def build_manifest(counts: Iterable[dict], staged_rows: int | None = None, english: dict | None = None) -> dict:
    """``counts``: dicts with source, origin, lang, reason, split, rows."""
    total = _blank()
    langs: dict = defaultdict(_blank)
    sources: dict = defaultdict(_blank)
    files: dict = defaultdict(lambda: {"source": None, "languages": defaultdict(_blank)})
    for c in counts:
        lang = c["lang"] if c["lang"] and c["reason"] != "unknown_language" else "unknown"  # raw code: in quarantine
        for node in (total, langs[lang], sources[c["source"]], files[c["origin"]]["languages"][lang]):
            _add(node, c["reason"], c["split"], c["rows"])
        files[c["origin"]]["source"] = c["source"]
    out = _plain({**total, "languages": langs, "sources": sources, "files": files})
    if english is not None:
        out["english_sentences"] = english
    if staged_rows is not None:
        out["rows_read"] = staged_rows
    check_manifest(out)
    return out


def check_manifest(m: dict) -> None:
    """in = kept + rejected, everywhere; and every row the readers produced is accounted for."""
    nodes = (
        [("total", m)] + [(f"language {k}", v) for k, v in m["languages"].items()] + [(f"source {k}", v) for k, v in m["sources"].items()]
    )
    nodes += [(f"file {f} [{lang}]", v) for f, node in m["files"].items() for lang, v in node["languages"].items()]
    for where, n in nodes:
        if n["rows_in"] != n["kept"] + sum(n["rejected"].values()):
            raise AssertionError(
                f"corpus manifest: {where}: rows in {n['rows_in']} != kept {n['kept']} + rejected {sum(n['rejected'].values())}"
            )
    if "rows_read" in m and m["rows_read"] != m["rows_in"]:
        raise AssertionError(f"corpus manifest: readers produced {m['rows_read']} rows but {m['rows_in']} were written")


def summary_lines(m: dict) -> list[str]:
    """A short human summary: per language, in / kept / top rejection reasons."""
    lines = [f"rows in {m['rows_in']:,}, kept {m['kept']:,}, rejected {m['rows_in'] - m['kept']:,}"]
    for lang, n in m["languages"].items():
        top = sorted(n["rejected"].items(), key=lambda kv: -kv[1])[:4]
        lines.append(f"  {lang}: in {n['rows_in']:,} kept {n['kept']:,}  " + ", ".join(f"{r} {c:,}" for r, c in top))
    return lines
