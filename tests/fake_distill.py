"""A stand-in for `mdistill run` in the scheduler tests (a real subprocess, seconds not minutes):
writes a run directory as a distillation does: the exported student (a copy of a tiny
sentence-transformers model) and report.json whose summary metric the test chooses.

    python tests/fake_distill.py MODEL_DIR RUN_DIR METRIC [NAME]
"""

import json
import shutil
import sys
from pathlib import Path

model, run_dir, metric = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
name = sys.argv[4] if len(sys.argv) > 4 else "tiny"
run_dir.mkdir(parents=True, exist_ok=True)
shutil.copytree(model, run_dir / "model", dirs_exist_ok=True)
report = {
    "config": {"name": name, "teacher": {"model": "tiny-teacher"}},
    "students": {"student": {"export": {"path": str(run_dir / "model")}}},
    "summary": {"student": {"teacher_space_top1": metric}},
    "metrics": {"de": {"student": {"teacher_space_top1": metric}}},
}
(run_dir / "report.json").write_text(json.dumps(report))
print(f"[mdistill] fake run: {run_dir} teacher_space_top1={metric}")
