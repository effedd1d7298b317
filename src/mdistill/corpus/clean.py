"""Cleaning of parallel pairs, vectorised with pyarrow compute: normalise, then keep or reject.

Every row comes out exactly once. A row that arrived with a read-time reason keeps it; otherwise
``reason`` is the first filter it fails (order in ``schema.CLEAN_REASONS``) or null (kept). So
rows in = kept + rejected always holds.
"""

from __future__ import annotations

import fnmatch
import hashlib
import zlib

import pyarrow as pa
import pyarrow.compute as pc

# RE2 syntax (pyarrow). Control characters, zero-width space and BOM become spaces; runs of any
# Unicode whitespace become one space.
_CTRL = r"[\x00-\x08\x0b-\x1f\x7f-\x9f\x{200b}\x{feff}]"
_WS = r"[\s\p{Zs}\x{2028}\x{2029}]+"
_WS_NEEDED = r"[\t\n\x0b\f\r\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]|  "
# printf (%s, %1$d, %(name)s), brace ({0}, {name}), shell ($HOME, ${x}) placeholders, markup tags and
# entities: a side that has no letter left without them is not a sentence.
_FORMAT = r"%(\d+\$)?[-+ #0']*(\d+|\*)?(\.(\d+|\*))?(hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGcrsaAp%]|%\([^)]*\)[-+ #0]*\d*(\.\d+)?[diouxXeEfFgGcrs]|\{[^{}]*\}|\$\{?\w+\}?|<[^<>]+>|&\w+;"


def _replace_where(a: pa.Array, needed: str, pattern: str, replacement: str) -> pa.Array:
    """``replace_substring_regex`` on the rows that match ``needed`` only: a cheap match first,
    because the replacement kernel costs ~10x more and most rows need nothing."""
    mask = pc.fill_null(pc.match_substring_regex(a, pattern=needed), False)
    if not pc.any(mask).as_py():
        return a
    return pc.replace_with_mask(a, mask, pc.replace_substring_regex(a.filter(mask), pattern=pattern, replacement=replacement))


def normalize_array(a: pa.Array) -> pa.Array:
    """Unicode NFC, control characters removed, whitespace collapsed and trimmed (nulls stay)."""
    a = pc.utf8_normalize(a.cast(pa.string()), form="NFC")
    a = _replace_where(a, _CTRL, _CTRL, " ")
    a = _replace_where(a, _WS_NEEDED, _WS, " ")
    return pc.utf8_trim_whitespace(a)


def normalize_text(s: str) -> str:
    return normalize_array(pa.array([s], pa.string()))[0].as_py()


def _has_letter(a: pa.Array) -> pa.Array:
    return pc.match_substring_regex(pc.replace_substring_regex(a, pattern=_FORMAT, replacement=""), pattern=r"\pL")


def reasons(
    en: pa.Array,
    text: pa.Array,
    lang: pa.Array,
    prior: pa.Array,
    *,
    langs: list[str],
    min_words: int,
    max_words: int,
    max_chars: int,
    max_length_ratio: float,
    min_chars: int = 1,
) -> pa.Array:
    """The reason of each row (null = kept), over normalised ``en``/``text``; ``prior`` wins."""
    n_en, n_tx = pc.utf8_length(en), pc.utf8_length(text)
    # normalised text has single spaces between words and none at the ends
    words = pc.if_else(pc.equal(n_en, 0), 0, pc.add(pc.count_substring(en, " "), 1))
    b_en = pc.binary_length(en.cast(pa.binary()))
    b_tx = pc.binary_length(text.cast(pa.binary()))
    ratio = pc.divide(
        pc.cast(pc.max_element_wise(b_en, b_tx), pa.float64()),
        pc.cast(pc.max_element_wise(pc.min_element_wise(b_en, b_tx), 1), pa.float64()),
    )
    checks = [  # (reason, failed?) in order; the first failed one is recorded
        ("lang_not_selected", pc.invert(pc.is_in(lang, pa.array(langs, pa.string())))),
        ("empty", pc.or_(pc.equal(n_en, 0), pc.equal(n_tx, 0))),
        ("too_many_chars", pc.or_(pc.greater(n_en, max_chars), pc.greater(n_tx, max_chars))),
        ("too_few_chars", pc.or_(pc.less(n_en, min_chars), pc.less(n_tx, min_chars))),
        ("format_only", pc.invert(pc.and_(_has_letter(en), _has_letter(text)))),
        ("too_short", pc.less(words, min_words)),
        ("too_long", pc.greater(words, max_words)),
        ("identical", pc.equal(en, text)),
        ("length_ratio", pc.greater(ratio, max_length_ratio)),
    ]
    out = prior.cast(pa.string())
    for name, failed in checks:
        out = pc.if_else(pc.and_(pc.is_null(out), pc.fill_null(failed, True)), pa.scalar(name, pa.string()), out)
    return out


def hash_unit(text: str, salt: str = "") -> float:
    """A stable number in [0, 1) from the text (same on every machine and run)."""
    return int.from_bytes(hashlib.blake2b((salt + text).encode(), digest_size=8).digest(), "big") / 2**64


def split_of(u: float, dev_fraction: float, test_fraction: float, train_fraction: float) -> str:
    if u < dev_fraction:
        return "dev"
    if u < dev_fraction + test_fraction:
        return "test"
    rest = dev_fraction + test_fraction
    return "train" if u < rest + train_fraction * (1 - rest) else "unused"


def assign_split(en: str, dev_fraction: float, test_fraction: float = 0.0, train_fraction: float = 1.0) -> str:
    """``dev`` / ``test`` / ``train`` / ``unused`` by hash of the normalised English sentence
    (``heldout`` comes from the source, ``split_and_bucket``).

    The split depends on the English side only, so one English sentence never lands in two
    splits, across all languages and sources. ``train_fraction`` subsamples what is left.
    """
    return split_of(hash_unit(en), dev_fraction, test_fraction, train_fraction)


def heldout_mask(source: pa.Array, origin: pa.Array, patterns: list[str]) -> list[bool]:
    """Rows of a held-out source: ``source`` label or ``origin`` file matches a pattern (fnmatch)."""
    if not patterns:
        return [False] * len(source)
    memo: dict[tuple, bool] = {}  # a batch holds a few (source, origin) pairs
    out = []
    for key in zip(source.to_pylist(), origin.to_pylist()):
        if key not in memo:
            memo[key] = any(x is not None and fnmatch.fnmatchcase(x, p) for x in key for p in patterns)
        out.append(memo[key])
    return out


def split_and_bucket(
    en: list[str | None], kept: list[bool], buckets: int, heldout: list[bool] | None = None, **fractions: float
) -> tuple[list[str | None], list[int]]:
    """The split of each kept row (``assign_split``) and the dedup bucket of every row (CRC-32 of
    the English sentence: every row of one English sentence lands in the same bucket).

    A row of a held-out source is ``heldout`` (out-of-domain test) unless its English hashes into
    ``train``: then it is ``unused``, so no held-out English is ever a training English."""
    split: list[str | None] = []
    bucket: list[int] = []
    for i, (e, k) in enumerate(zip(en, kept)):
        if e is None:
            split.append(None)
            bucket.append(i % buckets)  # rejected at read time: no English to group by
            continue
        s = split_of(hash_unit(e), **fractions) if k else None
        if s is not None and heldout is not None and heldout[i]:
            s = "unused" if s == "train" else "heldout"
        split.append(s)
        bucket.append(zlib.crc32(e.encode()) % buckets)
    return split, bucket


def clean_table(
    t: pa.Table,
    *,
    langs: list[str],
    min_words: int,
    max_words: int,
    max_chars: int,
    max_length_ratio: float,
    dev_fraction: float,
    test_fraction: float,
    train_fraction: float,
    buckets: int = 1,
    min_chars: int = 1,
    heldout_sources: list[str] | None = None,
) -> pa.Table:
    """Ray Data ``map_batches`` function (``batch_format="pyarrow"``) over ``RAW_SCHEMA`` tables:
    normalises en/text, sets ``reason``, adds ``split`` (kept rows) and ``bucket``."""
    en, text = normalize_array(t.column("en").combine_chunks()), normalize_array(t.column("text").combine_chunks())
    reason = reasons(
        en,
        text,
        t.column("lang").combine_chunks(),
        t.column("reason").combine_chunks(),
        langs=langs,
        min_chars=min_chars,
        min_words=min_words,
        max_words=max_words,
        max_chars=max_chars,
        max_length_ratio=max_length_ratio,
    )
    split, bucket = split_and_bucket(
        en.to_pylist(),
        pc.is_null(reason).to_pylist(),
        buckets,
        heldout_mask(t.column("source").combine_chunks(), t.column("origin").combine_chunks(), heldout_sources or []),
        dev_fraction=dev_fraction,
        test_fraction=test_fraction,
        train_fraction=train_fraction,
    )
    t = t.set_column(t.schema.get_field_index("en"), "en", en).set_column(t.schema.get_field_index("text"), "text", text)
    t = t.set_column(t.schema.get_field_index("reason"), "reason", reason)
    return t.append_column("split", pa.array(split, pa.string())).append_column("bucket", pa.array(bucket, pa.int32()))
