"""The layout the project promises: recipes import only mdistill's stages (never each other), and
nothing read back from disk is unpickled."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_recipes_import_mdistill_stages_never_another_recipe():
    recipes = sorted((REPO / "pipelines").glob("*.py"))
    assert {p.stem for p in recipes} >= {"run", "tune", "schedule"}
    for p in recipes:
        for mod in _imports(p):
            assert not mod.startswith("mdistill.pipelines"), f"{p.name} imports the recipe {mod}"
            assert not mod.startswith("pipelines"), f"{p.name} imports {mod}"


def test_nothing_is_unpickled_from_disk():
    unsafe = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(")
    hits = []
    for root in ("src", "pipelines", "benchmarks"):
        for p in (REPO / root).rglob("*.py"):
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if unsafe.search(line) or ("torch.load(" in line and "weights_only=True" not in line):
                    hits.append(f"{p.relative_to(REPO)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)
