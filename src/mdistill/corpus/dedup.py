"""The second pass over one dedup bucket: exact pair deduplication, then the corpus files.

Every row with the same English sentence was routed to the same bucket, so a bucket alone can
decide duplicates and list its English sentences once. "First" is by (origin, position), so the
result does not depend on the order in which tasks ran.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PAIR_COLUMNS = ["en", "lang", "text", "split", "source", "origin", "position"]
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


def finish_bucket(staged: Path, out: Path, bucket: int, dedup: bool = True) -> pa.Table:
    """Read ``staged`` (one bucket's rows), write ``out/{pairs,quarantine,english}/part-NNNNN.parquet``
    and return the bucket's row counts by (source, origin, lang, reason, split)."""
    t = pq.read_table(staged)
    t = t.sort_by([("origin", "ascending"), ("position", "ascending"), ("lang", "ascending")])
    if dedup:
        t = mark_duplicates(t)
    kept = pc.is_null(t.column("reason"))
    pairs = t.filter(kept).select(PAIR_COLUMNS)
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
