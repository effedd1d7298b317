"""The config reference, generated from the config models (``RunConfig`` and its sections) so that
the documentation cannot drift from the code: ``docs/hooks/config_reference.py`` renders it when
the site is built (``mkdocs build``), one table per section, each key with its type, default and
description (the ``Field(description=...)`` of the model)."""

from __future__ import annotations

import json
import re
import types
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

from mdistill.config import RunConfig


class Row(NamedTuple):
    key: str  # dotted, as on the command line: train.lr, corpus.sources[].format, tune.space.<key>.grid
    type: str
    default: str
    description: str


class Section(NamedTuple):
    key: str  # "" for the top level
    doc: str  # the section model's docstring
    rows: list[Row]


def _section_model(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """The model a field holds and the key suffix of its entries: ``X`` / ``X | None`` -> (X, ""),
    ``list[X]`` -> (X, "[]"), ``dict[str, X]`` -> (X, ".<key>"); None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _section_model(inner[0]) if len(inner) == 1 else None
    if origin is list and args and _section_model(args[0]) is not None:
        return _section_model(args[0])[0], "[]"
    if origin is dict and len(args) == 2 and _section_model(args[1]) is not None:
        return _section_model(args[1])[0], ".<key>"
    return None


def type_name(annotation: Any) -> str:
    """A type as a reader writes it in YAML (no ``|``: it would split a Markdown table's cell)."""
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is dict:
        return f"map of {type_name(args[0])} to {type_name(args[1])}" if args else "map"
    if annotation is dict:
        return "map"
    if annotation is list:
        return "list"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field) -> str:
    """The default as YAML/JSON text; ``required`` when there is none; a section's own defaults are its table."""
    if field.is_required():
        return "required"
    default = field.default
    if default is PydanticUndefined:
        return "required"
    if isinstance(default, BaseModel):
        return "(section below)"
    return json.dumps(to_jsonable_python(default), ensure_ascii=False)


def sections(model: type[BaseModel] = RunConfig, key: str = "") -> list[Section]:
    """Every section of ``model``, depth first, in field order: the keys of each, then its subsections."""
    rows, subsections = [], []
    for name, field in model.model_fields.items():
        full = f"{key}.{name}" if key else name
        rows.append(Row(full, type_name(field.annotation), default_text(field), field.description or ""))
        nested = _section_model(field.annotation)
        if nested is not None:
            sub_model, suffix = nested
            subsections += sections(sub_model, full + suffix)
    return [Section(key, (model.__doc__ or "").strip(), rows), *subsections]


def _markdown_text(text: str) -> str:
    """Plain text inside a Markdown table cell: HTML-ish and emphasis characters escaped outside `code`."""
    parts = text.replace("``", "`").split("`")  # docstrings' RST literals are Markdown code spans
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = re.sub(r"([\\*_|\[\]])", r"\\\1", parts[i]).replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts).replace("\n", " ")


def render_markdown() -> str:
    lines = [
        "# Config reference",
        "",
        "Generated from the config models in `src/mdistill/config.py` when this site is built: every key of a run's",
        "YAML config, its type, its default and what it does. Keys are written as on the command line",
        "(`mdistill run CONFIG train.lr=1e-4`); `[]` marks the entries of a list, `<key>` the keys of a map.",
        "A section whose default is `null` is off until it is given.",
        "",
    ]
    for s in sections():
        lines += [f"## {_markdown_text(s.key) if s.key else 'Top level'}", ""]
        if s.doc:
            lines += [" ".join(_markdown_text(line.strip()) for line in s.doc.splitlines() if line.strip()), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for r in s.rows:
            lines.append(f"| `{r.key}` | {_markdown_text(r.type)} | `{r.default}` | {_markdown_text(r.description)} |")
        lines.append("")
    return "\n".join(lines)
