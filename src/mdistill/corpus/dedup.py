"""The second pass over one dedup bucket: exact pair deduplication, then the corpus files.

Every row with the same English sentence was routed to the same bucket, so a bucket alone can
decide duplicates, number the translations of each (English, language) and list its English
sentences once. "First" is by (origin, position), so the result does not depend on the order in
which tasks ran.

``variant`` numbers the kept translations of one (English, language) by text: 0 is the smallest.
Training and evaluation take ``variant == 0`` (one right answer per English sentence and
language), a filter that streams instead of a group-by over the whole corpus.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PAIR_COLUMNS = ["en", "lang", "text", "split", "variant", "source", "origin", "position"]
QUARANTINE_COLUMNS = ["en", "lang", "text", "reason", "raw", "source", "origin", "position"]
COUNT_KEYS = ["source", "origin", "lang", "reason", "split"]


def mark_duplicates(t: pa.Table) -> pa.Table:
    """``reason = "duplicate"`` on every kept row whose (lang, en, text) appeared earlier in ``t``."""
    idx = pa.array(np.arange(t.num_rows))
    kept = pc.is_null(t.column("reason"))
    k = t.select(["lang", "en", "text"]).append_column("idx", idx).filter(kept)
    first = k.group_by(["lang", "en", "text"], use_threads=False).aggregate([("idx", "min")]).column("idx_min")
    dup = pc.and_(kept, pc.invert(pc.is_in(idx, first)))
    return t.set_column(
        t.schema.get_field_index("reason"), "reason", pc.if_else(dup, pa.scalar("duplicate", pa.string()), t.column("reason"))
    )


def number_variants(pairs: pa.Table) -> pa.Array:
    """0, 1, 2, ... for the translations of each (en, lang), in text order (0: the smallest)."""
    if pairs.num_rows == 0:
        return pa.array([], pa.int32())
    order = pairs.append_column("idx", pa.array(np.arange(pairs.num_rows))).sort_by(
        [("lang", "ascending"), ("en", "ascending"), ("text", "ascending")]
    )
    en, lang = order.column("en").to_numpy(zero_copy_only=False), order.column("lang").to_numpy(zero_copy_only=False)
    new_group = np.r_[True, (en[1:] != en[:-1]) | (lang[1:] != lang[:-1])]
    starts = np.flatnonzero(new_group)
    rank = np.arange(len(en)) - np.repeat(starts, np.diff(np.r_[starts, len(en)]))
    out = np.empty(len(en), np.int32)
    out[order.column("idx").to_numpy()] = rank
    return pa.array(out)


def finish_bucket(staged: Path, out: Path, bucket: int, dedup: bool = True) -> pa.Table:
    """Read ``staged`` (one bucket's rows), write ``out/{pairs,quarantine,english}/part-NNNNN.parquet``
    and return the bucket's row counts by (source, origin, lang, reason, split)."""
    t = pq.read_table(staged)
    t = t.sort_by([("origin", "ascending"), ("position", "ascending"), ("lang", "ascending")])
    if dedup:
        t = mark_duplicates(t)
    kept = pc.is_null(t.column("reason"))
    pairs = t.filter(kept)
    pairs = pairs.append_column("variant", number_variants(pairs)).select(PAIR_COLUMNS)
    quarantine = t.filter(pc.invert(kept)).select(QUARANTINE_COLUMNS)
    english = (
        pairs.group_by(["en", "split"], use_threads=False)
        .aggregate([("lang", "count_distinct")])
        .rename_columns(["en", "split", "languages"])
        .sort_by("en")
    )
    name = f"part-{bucket:05d}.parquet"
    for sub, table in (("pairs", pairs), ("quarantine", quarantine), ("english", english)):
        (out / sub).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / sub / name)  # same name on a retry: the retry overwrites
    counts = t.group_by(COUNT_KEYS, use_threads=False).aggregate([([], "count_all")])
    return counts.rename_columns([*COUNT_KEYS, "rows"])
