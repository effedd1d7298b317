"""Row producers for Ray Data (no Ray import): each turns one input unit into pair rows."""

from __future__ import annotations

from pathlib import Path

from mdistill.corpus.libreoffice import iter_pairs


def libreoffice_file_pairs(row: dict, help_root: str, langs: list[str]) -> list[dict]:
    """``flat_map`` function: one help file (``{"file": rel}``) -> its aligned pairs in every language."""
    return [r for lang in langs for r in iter_pairs(Path(help_root), lang, [row["file"]])]


def list_help_files(help_root: Path, max_files: int | None = None) -> list[str]:
    en = help_root / "en-US"
    files = sorted(str(p.relative_to(en)) for p in en.rglob("*.html"))
    return files[:max_files] if max_files else files
