"""The documentation: the site builds with ``mkdocs build --strict`` (a broken link, a missing page or
anchor fails it), the config reference it generates lists every key of ``RunConfig`` with its
default and description (checked against pydantic's own JSON schema of the model), and the README
stays short with links that resolve."""

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mdistill.config import RunConfig

REPO = Path(__file__).resolve().parents[1]


def schema_keys() -> dict[str, dict]:
    """Every key of the config, dotted as on the command line, with its JSON-schema property,
    walked from pydantic's schema (not from the reference generator's own walk)."""
    schema = RunConfig.model_json_schema()
    defs = schema["$defs"]

    def ref_of(prop: dict) -> str | None:
        for p in [prop, *prop.get("anyOf", [])]:
            if "$ref" in p:
                return p["$ref"].rsplit("/", 1)[1]
        return None

    out: dict[str, dict] = {}

    def walk(model: dict, prefix: str) -> None:
        for name, prop in model["properties"].items():
            key = f"{prefix}{name}"
            out[key] = prop | {"required": name in model.get("required", [])}
            nested = ref_of(prop)
            items = [p for p in [prop, *prop.get("anyOf", [])] if p.get("type") == "array" and "$ref" in p.get("items", {})]
            values = [
                p
                for p in [prop, *prop.get("anyOf", [])]
                if isinstance(p.get("additionalProperties"), dict) and "$ref" in p["additionalProperties"]
            ]
            if nested:
                walk(defs[nested], f"{key}.")
            elif items:
                walk(defs[ref_of(items[0]["items"])], f"{key}[].")
            elif values:
                walk(defs[ref_of(values[0]["additionalProperties"])], f"{key}.<key>.")
            out[key]["section"] = bool(nested)

    walk(schema, "")
    return out


def html_rows(page: Path) -> dict[str, list[str]]:
    """key -> the text of its table row's cells, as a reader sees them."""
    rows = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", page.read_text(), flags=re.S):
        cells = [" ".join(html.unescape(re.sub(r"<[^>]+>", "", c)).split()) for c in re.findall(r"<td>(.*?)</td>", tr, flags=re.S)]
        if len(cells) == 4:
            rows[cells[0]] = cells
    return rows


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_site_builds_strict_with_every_page(site):
    for page in ("index", "getting-started/index", "concepts/index", "tracking/index", "reference/config/index", "benchmarks/index"):
        assert (site / f"{page}.html").exists(), page
    for recipe in ("run", "tune", "classify", "compress", "static", "schedule"):
        assert (site / "recipes" / recipe / "index.html").exists(), recipe
    assert not (site / "hooks").exists()  # the build's own code is not published
    assert "Out-of-domain ablations" in (site / "benchmarks" / "index.html").read_text()  # BENCHMARKS.md, included whole


def test_config_reference_lists_every_key_with_its_default_and_description(site):
    rows = html_rows(site / "reference" / "config" / "index.html")
    keys = schema_keys()
    assert set(rows) == set(keys)
    assert {
        "train.lr",
        "corpus.sources[].format",
        "tune.space.<key>.grid",
        "tune.scheduler.asha.max_t",
        "tracking.mlflow.tracking_uri",
    } <= set(rows)
    for key, prop in keys.items():
        _, _, default, description = rows[key]
        assert prop.get("description") and description == " ".join(prop["description"].replace("`", "").split()), key
        if prop["required"]:
            assert default == "required", key
        elif prop["section"] and isinstance(prop["default"], dict):
            assert default == "(section below)", key
        else:
            assert default == json.dumps(prop["default"], ensure_ascii=False), key


def test_readme_is_short_and_its_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) < 150
    links = [u.split("#")[0] for u in re.findall(r"\]\(([^)]+)\)", text) if not u.startswith(("http", "#"))]
    assert links and all((REPO / u).exists() for u in links), [u for u in links if not (REPO / u).exists()]
    assert "make demo" in text and "make test" in text and "torch==2.13.0" in text
