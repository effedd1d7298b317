"""Export the trained student as a sentence-transformers directory.

Transformer (frozen bottom + trained top layers) -> mean Pooling -> Dense -> Normalize, with the
student's prompt as the default prompt, so ``SentenceTransformer(path).encode(texts)`` gives the
vectors mdistill trained and evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


def export_student(st_model, dense: nn.Linear | None, out_dir: str | Path, *, prompt: str, extra: dict | None = None) -> Path:
    from sentence_transformers import SentenceTransformer, models

    mods = [st_model[0], st_model[1]]  # Transformer, Pooling (carry the trained layers in place)
    if dense is not None:
        d = models.Dense(dense.in_features, dense.out_features, bias=True, activation_function=nn.Identity())
        with torch.no_grad():
            d.linear.weight.copy_(dense.weight)
            d.linear.bias.copy_(dense.bias)
        mods.append(d)
    mods.append(models.Normalize())
    prompts = {"query": prompt} if prompt else None
    out = SentenceTransformer(modules=mods, prompts=prompts, default_prompt_name="query" if prompt else None, device="cpu")
    out.save(str(out_dir))
    if extra:
        (Path(out_dir) / "mdistill.json").write_text(json.dumps(extra, indent=2, default=str))
    return Path(out_dir)


CARD_METRICS = (
    ("teacher_space_top1", "teacher-space top-1"),
    ("translation_top1_xx2en", "translation top-1 xx→en"),
    ("translation_top1_en2xx", "translation top-1 en→xx"),
    ("mse100", "MSE×100"),
    ("bitext_f1", "bitext mining F1"),
)


def _card_value(v) -> str:
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _iso639(lang: str) -> str:
    return lang.split("_")[0].split("-")[0].lower()  # zh_CN -> zh: the Hub's language tags are ISO 639-1


def write_model_card(model_dir: str | Path, info: dict) -> Path:
    """Write ``<model_dir>/README.md``: a Hugging Face model card for the exported student.

    ``info`` (all optional but ``teacher``)::

        name, teacher, base_model (the student's starting model), languages: [..],
        data: {sources: {name: count} | [names], train_pairs: {lang: n}, dev_pairs: {lang: n}, train_english: n},
        metrics: {lang: {"n": n, model: {metric: v}}} (the run's table) and model: the row name of this student,
        summary: {model: {metric: mean}}, config: dict, license: str

    YAML front matter (``library_name: sentence-transformers``, ``language``, ``tags``,
    ``pipeline_tag: sentence-similarity``), then teacher, data, languages, metrics, config, usage.
    """
    import yaml

    model_dir = Path(model_dir)
    langs = list(info.get("languages") or [])
    teacher, name, row_name = info["teacher"], info.get("name", model_dir.name), info.get("model", "student")
    front = {
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "language": list(dict.fromkeys(["en", *(_iso639(x) for x in langs)])),
        "tags": [
            "sentence-transformers",
            "sentence-similarity",
            "feature-extraction",
            "knowledge-distillation",
            "multilingual",
            "mdistill",
        ],
    }
    if info.get("base_model"):
        front["base_model"] = info["base_model"]
    if info.get("license"):
        front["license"] = info["license"]
    data, metrics = info.get("data") or {}, info.get("metrics") or {}
    md = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {name}",
        "",
        f"A multilingual sentence-embedding model distilled with mdistill from the teacher **{teacher}**"
        + (f", starting from **{info['base_model']}**" if info.get("base_model") else "")
        + ". Its vector for a sentence in any of its languages approximates the teacher's vector for the English sentence "
        "(Reimers & Gurevych 2020, https://arxiv.org/abs/2004.09813), so an English index built with the teacher can be queried "
        "in these languages.",
        "",
        f"- Teacher: `{teacher}`",
        f"- Languages: en, {', '.join(langs)}" if langs else "- Languages: en",
        "",
        "## Training data",
        "",
    ]
    sources = data.get("sources")
    if isinstance(sources, dict):
        md += [
            f"- {k}: {v if not isinstance(v, dict) else ', '.join(f'{a} {b}' for a, b in v.items() if not isinstance(b, dict))}"
            for k, v in sources.items()
        ]
    elif sources:
        md += [f"- {s}" for s in sources]
    if data.get("train_pairs"):
        md += ["", "| lang | train pairs | dev pairs |", "|---|---|---|"]
        md += [f"| {lang} | {n} | {(data.get('dev_pairs') or {}).get(lang, '–')} |" for lang, n in data["train_pairs"].items()]
    if data.get("train_english") is not None:
        md += ["", f"Distinct English training sentences: {data['train_english']}."]
    if metrics:
        cols = [(k, label) for k, label in CARD_METRICS if any(k in (r.get(row_name) or {}) for r in metrics.values())]
        md += [
            "",
            "## Evaluation (dev split, per language)",
            "",
            f"This model is `{row_name}`; the others are baselines from the same run (`teacher`: the teacher alone).",
            "",
            "| lang | n | model | " + " | ".join(label for _, label in cols) + " |",
            "|---|---|---|" + "---|" * len(cols),
        ]
        for lang, r in metrics.items():
            for m, vals in r.items():
                if isinstance(vals, dict):
                    shown = f"**{m}**" if m == row_name else m
                    md.append(f"| {lang} | {r.get('n', '')} | {shown} | " + " | ".join(_card_value(vals.get(k)) for k, _ in cols) + " |")
    mean = (info.get("summary") or {}).get(row_name)
    if mean:
        md += ["", "Mean over languages: " + ", ".join(f"{k} {_card_value(v)}" for k, v in mean.items()) + "."]
    md += [
        "",
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("path/to/this/folder")  # the folder holding this README',
        'embeddings = model.encode(["Hello world", "Hallo Welt"])',
        "```",
        "",
        "The folder also loads with `transformers.AutoModel.from_pretrained(path)` (the transformer alone; pooling, the Dense "
        "head and normalisation are the sentence-transformers modules listed in `modules.json`).",
    ]
    if info.get("config"):
        md += ["", "## Config", "", "```yaml", yaml.safe_dump(info["config"], sort_keys=False, allow_unicode=True).strip(), "```"]
    out = model_dir / "README.md"
    out.write_text("\n".join(md) + "\n")
    return out


def model_card_info(report: dict, student: str | None = None) -> dict:
    """``write_model_card``'s ``info`` from a run report (``mdistill.report`` layout); ``student``:
    which student (default: the first, or ``student`` in the single-student layout)."""
    cfg = report.get("config") or {}
    students = report.get("students") or {}
    student = student or (next(iter(students)) if students else "student")
    s = students.get(student, {})
    keep = {m for m in [student, *(report.get("baselines") or [])] if not (":" in m and not m.startswith(student + ":"))}
    metrics = {lang: {k: v for k, v in r.items() if k == "n" or k in keep} for lang, r in (report.get("metrics") or {}).items()}
    corpus = report.get("corpus") or {}
    return {
        "name": cfg.get("name", student) if len(students) <= 1 else f"{cfg.get('name', 'mdistill')}-{student}",
        "model": student,
        "teacher": (cfg.get("teacher") or {}).get("model", "?"),
        "base_model": s.get("model") or (cfg.get("student") or {}).get("model"),
        "languages": (cfg.get("corpus") or {}).get("langs") or sorted(metrics),
        "data": {
            **(report.get("data") or {}),
            "sources": corpus.get("sources")
            or [src.get("name") or src.get("format") for src in (cfg.get("corpus") or {}).get("sources", [])],
        },
        "metrics": metrics,
        "summary": report.get("summary"),
        "config": cfg,
    }
