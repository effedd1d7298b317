"""Cleaning of parallel pairs: normalise, then keep or reject each row with a reason.

Every input row comes out exactly once, with ``reason`` = None (kept) or the first filter it
failed, so rows in = kept + rejected always holds.
"""

from __future__ import annotations

import re
import unicodedata

_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\ufeff]")
_WS = re.compile(r"\s+")

_LANG_ALIASES = {"zh-hans": "zh_CN", "zh-cn": "zh_CN", "zh-sg": "zh_CN", "zh-hant": "zh_TW", "zh-tw": "zh_TW", "zh-hk": "zh_HK", "pt-br": "pt_BR"}


def normalize_lang(code: str) -> str:
    """``de-DE``/``de_DE``/``DE`` -> ``de``; Chinese and pt_BR keep their region (``zh_CN``)."""
    c = code.strip().replace("_", "-").lower()
    if c in _LANG_ALIASES:
        return _LANG_ALIASES[c]
    base = c.split("-")[0]
    if not re.fullmatch(r"[a-z]{2,3}", base):
        raise ValueError(f"not a language code: {code!r}")
    return base


def normalize_text(s: str) -> str:
    """Unicode NFC, control characters removed, whitespace collapsed."""
    return _WS.sub(" ", _CTRL.sub(" ", unicodedata.normalize("NFC", s))).strip()


def reject_reason(en: str, text: str, *, min_words: int, max_words: int, max_chars: int, max_length_ratio: float) -> str | None:
    if not en or not text:
        return "empty"
    if len(en) > max_chars or len(text) > max_chars:
        return "too_many_chars"
    n = len(en.split())
    if n < min_words:
        return "too_short"
    if n > max_words:
        return "too_long"
    if en == text:
        return "identical"
    # UTF-8 bytes, not characters: one CJK character carries about as much as 3 Latin ones
    a, b = len(en.encode()), len(text.encode())
    if max(a, b) / max(1, min(a, b)) > max_length_ratio:
        return "length_ratio"
    return None


def clean_batch(batch: dict, *, min_words: int, max_words: int, max_chars: int, max_length_ratio: float) -> dict:
    """Ray Data ``map_batches`` function over columns ``en``, ``text`` (numpy or lists)."""
    en = [normalize_text(str(x)) for x in batch["en"]]
    text = [normalize_text(str(x)) for x in batch["text"]]
    reasons = [reject_reason(a, b, min_words=min_words, max_words=max_words, max_chars=max_chars, max_length_ratio=max_length_ratio) for a, b in zip(en, text)]
    return {**batch, "en": en, "text": text, "reason": reasons}


def hash_unit(text: str, salt: str = "") -> float:
    """A stable number in [0, 1) from the text (same on every machine and run)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b((salt + text).encode(), digest_size=8).digest(), "big") / 2**64


def assign_split(en: str, dev_fraction: float, train_fraction: float) -> str:
    """``dev`` / ``train`` / ``unused`` by hash of the normalised English sentence.

    The split depends on the English side only, so one English sentence never lands in two
    splits, across all languages.
    """
    u = hash_unit(en)
    if u < dev_fraction:
        return "dev"
    return "train" if u < dev_fraction + train_fraction * (1 - dev_fraction) else "unused"


def clean_table(batch, **filters):
    """``clean_batch`` over a pyarrow table, with ``reason`` typed as string even when all rows pass
    (an all-null column would otherwise become Arrow's null type and not match other files)."""
    import pyarrow as pa

    out = clean_batch(batch.to_pydict(), **filters)
    return pa.table({k: pa.array(v, pa.string()) if k in ("en", "text", "reason") else pa.array(v) for k, v in out.items()})
