"""Names that become path components (run names, registry model names, student names, versions).

A name reaches folders (``runs/{name}``, ``<registry>/<name>/<version>``), job ids and symlink
targets, so anything that could climb out of its folder (``..``, ``/``, a leading ``.``) is
refused where the name enters: the config models and every registry entry point.
"""

from __future__ import annotations

import re
from pathlib import Path

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAME_RULE = "letters, digits, '.', '_', '-', starting with a letter or digit, at most 128 characters, no '..'"


def check_name(value: object, what: str = "name") -> str:
    """``value`` if it is a safe single path component, else ``ValueError`` naming ``what`` and the value."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not a valid name: {NAME_RULE}")
    return value


def inside(root: Path, path: Path, what: str) -> Path:
    """``path`` resolved, if it lies inside ``root`` resolved (a symlinked folder can still point out)."""
    base, resolved = root.resolve(), path.resolve()
    if not resolved.is_relative_to(base):
        raise ValueError(f"{what}: {path} resolves to {resolved}, outside {base}")
    return resolved
