"""MkDocs hook: pages generated at build time, so that they cannot drift from their source.

- ``reference/config.md``: the config reference, from the config models (``mdistill.config_reference``);
- ``benchmarks.md``: the repository's ``BENCHMARKS.md`` (one file, read on GitHub and on the site).
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

from mdistill.config_reference import render_markdown


def on_files(files: Files, config) -> Files:
    repo = Path(config.config_file_path).parent
    files.append(File.generated(config, "reference/config.md", content=render_markdown()))
    files.append(File.generated(config, "benchmarks.md", content=(repo / "BENCHMARKS.md").read_text()))
    return files
