"""Out-of-domain ablations (issue 14): one change per row against configs/default.yaml.

Each variant is a whole ``mdistill run`` in a fresh subprocess (its own local Ray), sharing the
cache folder, so a variant recomputes only the teacher vectors / frozen states it has not seen.
The table reports, per language, teacher-space top-1 on the held-out sources (never trained on)
beside the in-domain dev mean, the linear-map and untrained baselines of the same run, and the
run's wall time.

    python benchmarks/ablation_ood.py --variant base: \
        --variant "epochs3:train.epochs=3" --variant "cosine:train.loss=cosine" \
        --out benchmarks/results/ablation_ood.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mdistill.report.schema import load_report

LANGS = ("de", "es", "fr", "zh_CN")


def run_variant(config: str, name: str, overrides: list[str], runs: Path) -> dict:
    out = runs / name
    cmd = [str(Path(sys.executable).parent / "mdistill"), "run", config, f"name=abl_{name}", f"output_dir={out}", *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        return {"name": name, "overrides": overrides, "wall_s": wall, "error": proc.stderr[-2000:]}
    report = load_report(out / "report.json")
    student = next(iter(report.students))
    models = {"student": student, "linear_map": "linear_map", "untrained": "untrained", "teacher": "teacher"}

    def top1(table, model) -> dict[str, float]:
        return {lg: row.models[model].teacher_space_top1 for lg, row in table.items() if model in row.models}

    return {
        "name": name,
        "overrides": overrides,
        "wall_s": round(wall, 1),
        "stages_s": {k: round(v, 1) for k, v in report.timings_s.items()},
        "train_pairs": sum(report.data.train_pairs.values()),
        "student_rows": report.data.student_rows,
        "dev_mean": {k: report.summary[m].teacher_space_top1 for k, m in models.items() if m in report.summary},
        "heldout": {k: top1(report.heldout_metrics, m) for k, m in models.items()},
        "heldout_mean": {k: report.heldout_summary[m].teacher_space_top1 for k, m in models.items() if m in report.heldout_summary},
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| variant | overrides | train pairs | wall (train stage) | dev mean | held-out de | es | fr | zh_CN | held-out mean | linear map (held-out mean) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | `{' '.join(r['overrides'])}` | failed | | | | | | | | |")
            continue
        h = r["heldout"]["student"]
        lines.append(
            f"| {r['name']} | `{' '.join(r['overrides']) or '-'}` | {r['train_pairs']:,} | {r['wall_s'] / 60:.1f} min ({r['stages_s'].get('train', 0):.0f} s) "
            f"| {r['dev_mean']['student']:.3f} | "
            + " | ".join(f"{h.get(lg, float('nan')):.3f}" for lg in LANGS)
            + f" | **{r['heldout_mean']['student']:.3f}** | {r['heldout_mean'].get('linear_map', float('nan')):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--variant", action="append", required=True, help="NAME:key=value,key=value (empty: the config as is)")
    ap.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ablation_ood.json"))
    args = ap.parse_args()

    results = json.loads(args.out.read_text()) if args.out.exists() else []
    for spec in args.variant:
        name, _, rest = spec.partition(":")
        overrides = [o for o in rest.split(",") if o]
        print(f"[ablation] {name}: {' '.join(overrides) or '(config as is)'}", flush=True)
        r = run_variant(args.config, name, overrides, args.runs)
        results = [x for x in results if x["name"] != name] + [r]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(markdown([r]).splitlines()[-1] if "error" not in r else r["error"], flush=True)
    print(markdown(results))


if __name__ == "__main__":
    main()
