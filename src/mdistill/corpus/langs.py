"""Language codes: one convention for every reader.

mdistill writes a language as its lowercase ISO 639 code (``de``, ``fr``, ``ja``), and keeps a
region only where the written language differs by region: Chinese script (``zh_CN`` simplified,
``zh_TW``/``zh_HK`` traditional) and Brazilian Portuguese (``pt_BR``). ``de_DE``, ``de-DE``,
``DE`` and ``de-AT`` are all ``de``; ``zh-Hans`` and ``zh-cn`` are ``zh_CN``; bare ``zh`` is
``zh_CN``. This matches the locale folders of Debian (gettext, LibreOffice help, DDTP).
"""

from __future__ import annotations

import re
from functools import lru_cache

_ALIASES = {
    "zh": "zh_CN",
    "zh-hans": "zh_CN",
    "zh-cn": "zh_CN",
    "zh-sg": "zh_CN",
    "zh-hans-cn": "zh_CN",
    "zh-hant": "zh_TW",
    "zh-tw": "zh_TW",
    "zh-hant-tw": "zh_TW",
    "zh-hk": "zh_HK",
    "zh-hant-hk": "zh_HK",
    "pt-br": "pt_BR",
}


def normalize_lang(code: str) -> str:
    """``de-DE``/``de_DE``/``DE`` -> ``de``; Chinese and pt_BR keep their region (``zh_CN``).

    Locale decorations (``de_DE.UTF-8``, ``sr@latin``) are dropped. Raises ValueError for
    something that is not a language code.
    """
    c = code.strip().split(".")[0].split("@")[0].replace("_", "-").lower()
    if c in _ALIASES:
        return _ALIASES[c]
    base = c.split("-")[0]
    if not re.fullmatch(r"[a-z]{2,3}", base):
        raise ValueError(f"not a language code: {code!r}")
    return base


def try_normalize_lang(code: object) -> str | None:
    """``normalize_lang`` for data, where a bad code becomes a quarantine reason, not an error."""
    return _try_normalize(code) if isinstance(code, str) else None


@lru_cache(maxsize=4096)  # called per row; a corpus has a handful of distinct codes
def _try_normalize(code: str) -> str | None:
    try:
        return normalize_lang(code)
    except ValueError:
        return None
