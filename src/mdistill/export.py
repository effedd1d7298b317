"""Export the trained student as a sentence-transformers directory.

Transformer (frozen bottom + trained top layers) -> mean Pooling -> Dense -> Normalize, with the
student's prompt as the default prompt, so ``SentenceTransformer(path).encode(texts)`` gives the
vectors mdistill trained and evaluated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mdistill.report.schema import DataCounts, LanguageRow, Metrics, MetricsTable, RunReport


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


@dataclass
class CardInfo:
    """What a model card says: the exported student, its teacher, data and metrics."""

    name: str
    teacher: str
    row_name: str = "student"  # this student's row in ``metrics``
    base_model: str | None = None
    languages: list[str] = field(default_factory=list)
    data: DataCounts | None = None
    sources: list[str] = field(default_factory=list)  # "name: rows_in N, kept M"
    metrics: MetricsTable = field(default_factory=dict)  # this student and its baselines
    summary: Metrics | None = None
    heldout_metrics: MetricsTable = field(default_factory=dict)  # out-of-domain: held-out sources
    heldout_sources: list[str] = field(default_factory=list)
    heldout_summary: Metrics | None = None
    config: dict | None = None
    license: str | None = None


def _evaluation_section(title: str, table: MetricsTable, summary: Metrics | None, row_name: str) -> list[str]:
    if not table:
        return []
    present = [m for row in table.values() for m in row.models.values()]
    cols = [(k, label) for k, label in CARD_METRICS if any(getattr(m, k) is not None for m in present)]
    md = [
        "",
        f"## {title}",
        "",
        f"This model is `{row_name}`; the others are baselines from the same run (`teacher`: the teacher alone).",
        "",
        "| lang | n | model | " + " | ".join(label for _, label in cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for lang, row in table.items():
        for m, vals in row.models.items():
            shown = f"**{m}**" if m == row_name else m
            md.append(f"| {lang} | {row.n} | {shown} | " + " | ".join(_card_value(getattr(vals, k)) for k, _ in cols) + " |")
    if summary is not None:
        md += ["", "Mean over languages: " + ", ".join(f"{k} {_card_value(v)}" for k, v in summary.model_dump().items()) + "."]
    return md


def write_model_card(model_dir: str | Path, info: CardInfo) -> Path:
    """Write ``<model_dir>/README.md``: a Hugging Face model card for the exported student.

    YAML front matter (``library_name: sentence-transformers``, ``language``, ``tags``,
    ``pipeline_tag: sentence-similarity``), then teacher, data, languages, metrics, config, usage.
    """
    import yaml

    model_dir = Path(model_dir)
    front = {
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "language": list(dict.fromkeys(["en", *(_iso639(x) for x in info.languages)])),
        "tags": [
            "sentence-transformers",
            "sentence-similarity",
            "feature-extraction",
            "knowledge-distillation",
            "multilingual",
            "mdistill",
        ],
    }
    if info.base_model:
        front["base_model"] = info.base_model
    if info.license:
        front["license"] = info.license
    md = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {info.name}",
        "",
        f"A multilingual sentence-embedding model distilled with mdistill from the teacher **{info.teacher}**"
        + (f", starting from **{info.base_model}**" if info.base_model else "")
        + ". Its vector for a sentence in any of its languages approximates the teacher's vector for the English sentence "
        "(Reimers & Gurevych 2020, https://arxiv.org/abs/2004.09813), so an English index built with the teacher can be queried "
        "in these languages.",
        "",
        f"- Teacher: `{info.teacher}`",
        f"- Languages: en, {', '.join(info.languages)}" if info.languages else "- Languages: en",
        "",
        "## Training data",
        "",
        *[f"- {s}" for s in info.sources],
    ]
    if info.data is not None:
        md += ["", "| lang | train pairs | dev pairs |", "|---|---|---|"]
        md += [f"| {lang} | {n} | {info.data.dev_pairs.get(lang, '–')} |" for lang, n in info.data.train_pairs.items()]
        md += ["", f"Distinct English training sentences: {info.data.train_english}."]
    held = ", ".join(f"`{p}`" for p in info.heldout_sources)
    for title, table, summary in (
        ("Evaluation (dev split: in-domain, the training files' distribution)", info.metrics, info.summary),
        (f"Evaluation out of domain (held-out sources {held}, never trained on)", info.heldout_metrics, info.heldout_summary),
    ):
        md += _evaluation_section(title, table, summary, info.row_name)
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
    if info.config:
        md += ["", "## Config", "", "```yaml", yaml.safe_dump(info.config, sort_keys=False, allow_unicode=True).strip(), "```"]
    out = model_dir / "README.md"
    out.write_text("\n".join(md) + "\n")
    return out


def model_card_info(report: RunReport, student: str) -> CardInfo:
    """The card of one student of a run: its row and its own baselines (not the other students')."""
    keep = {student, *(b for b in report.baselines if ":" not in b or b.startswith(student + ":"))}

    def own(table: MetricsTable) -> MetricsTable:
        return {lang: LanguageRow(n=r.n, models={k: v for k, v in r.models.items() if k in keep}) for lang, r in table.items()}

    metrics = own(report.metrics)
    cfg = report.config
    s = report.students.get(student)
    sources = [f"{k}: rows in {v.rows_in}, kept {v.kept}" for k, v in report.corpus.sources.items()]
    return CardInfo(
        name=report.name if len(report.students) <= 1 else f"{report.name}-{student}",
        teacher=(cfg.get("teacher") or {}).get("model", "?"),
        row_name=student,
        base_model=(s.built_from[0].get("model") if s and s.built_from else None) or (cfg.get("student") or {}).get("model"),
        languages=(cfg.get("corpus") or {}).get("langs") or sorted(metrics),
        data=report.data,
        sources=sources,
        metrics=metrics,
        summary=report.summary.get(student),
        heldout_metrics=own(report.heldout_metrics),
        heldout_sources=(cfg.get("corpus") or {}).get("heldout_sources") or [],
        heldout_summary=report.heldout_summary.get(student),
        config=cfg,
    )


def classifier_card(
    name: str, *, labels: list[str], role: str, base: str, teacher: str, test: dict, task: str, balance: dict[str, dict[str, int]]
) -> str:
    """The model card (README.md) of an exported classifier: labels, how it was trained, and its
    per-language test accuracy / macro-F1 beside the teacher's (``ClassifyReport.test``)."""
    langs = list(test) or ["en"]  # a teacher exported before any evaluation: English
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "language:",
        *[f"- {_iso639(lang)}" for lang in dict.fromkeys(langs)],
        "tags: [mdistill, knowledge-distillation, text-classification]",
        "---",
        "",
        f"# {name}",
        "",
        f"A `{role}` classifier for the `{task}` task, trained by mdistill from `{base}` (teacher: `{teacher}`).",
        "",
        "```python",
        "from transformers import pipeline",
        f'clf = pipeline("text-classification", model="{name}")',
        'clf("Wählen Sie Format - Zellen, um das Zahlenformat zu ändern.")',
        "```",
        "",
        "## Labels",
        "",
        "| id | label | training paragraphs (English) |",
        "|---|---|---|",
        *[f"| {i} | {label} | {balance.get('train', {}).get(label, 0)} |" for i, label in enumerate(labels)],
        "",
        "## Test accuracy / macro-F1 per language (held-out help files)",
        "",
        "| language | this model | teacher |",
        "|---|---|---|",
    ]
    for lang, row in test.items():
        own, t = row.get(role), row.get("teacher")
        fmt = lambda m: "–" if m is None else f"{m.accuracy:.3f} / {m.macro_f1:.3f} (n={m.n})"  # noqa: E731
        lines.append(f"| {lang} | {fmt(own)} | {fmt(t)} |")
    return "\n".join(lines) + "\n"
