"""Run report: ``report.json`` (everything) and ``report.md`` (what a person reads first)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

MODELS = ("teacher", "untrained", "linear_map", "student")


class Timings(dict):
    @contextmanager
    def stage(self, name: str):
        t0 = time.time()
        print(f"[mdistill] stage {name} ...", flush=True)
        try:
            yield
        finally:
            self[name] = round(time.time() - t0, 2)
            print(f"[mdistill] stage {name} done in {self[name]:.1f}s", flush=True)


def metrics_markdown(table: dict) -> str:
    lines = [
        "| lang | n | model | teacher-space top-1 | translation top-1 xx→en | en→xx | MSE×100 |",
        "|---|---|---|---|---|---|---|",
    ]
    for lang, row in table.items():
        for m in MODELS:
            if m in row:
                r = row[m]
                lines.append(
                    f"| {lang} | {row['n']} | {m} | {r['teacher_space_top1']:.3f} | {r['translation_top1_xx2en']:.3f} | {r['translation_top1_en2xx']:.3f} | {r['mse100']:.3f} |"
                )
    return "\n".join(lines)


def write_report(out_dir: Path, report: dict) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    t = report["timings_s"]
    md = [
        f"# mdistill run `{report['config']['name']}`",
        "",
        f"Finished {report['finished']}; total {report['total_s']:.0f} s. Model: `{report['export']['path']}`.",
        "",
        "## Dev split, per language",
        "",
        metrics_markdown(report["metrics"]),
        "",
        "teacher: the English teacher alone; untrained: the student before training; linear_map: least squares "
        "from the frozen student's embeddings to the teacher's, fitted on the training pairs; student: the trained student.",
        "",
        f"Trained student beats every baseline (teacher-space top-1): {report['beats_baselines']}",
        "",
        "## Data",
        "",
        "| lang | rows in | kept | rejected | train pairs | dev pairs |",
        "|---|---|---|---|---|---|",
    ]
    for lang, m in report["corpus"]["languages"].items():
        md.append(
            f"| {lang} | {m['rows_in']} | {m['kept']} | {sum(m['rejected'].values())} | {report['data']['train_pairs'].get(lang, 0)} | {report['data']['dev_pairs'].get(lang, 0)} |"
        )
    c = report["teacher_cache"]
    md += [
        "",
        f"Teacher cache: {c['distinct_texts']} distinct texts, {c['cache_hits']} cache hits, {c['computed']} computed (fingerprint `{c['fingerprint'][:12]}`).",
        "",
        "## Timings (s)",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in t.items()],
        "",
        "## Training",
        "",
        "| epoch | loss | samples/s |",
        "|---|---|---|",
        *[f"| {h['epoch']} | {h['loss']:.5f} | {h['samples_per_s']:.0f} |" for h in report["train"]["history"]],
        "",
        f"Export check: `SentenceTransformer(path).encode` vs mdistill's own forward on {report['export']['checked']} dev sentences, max abs diff {report['export']['max_abs_diff']:.2e}.",
    ]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
