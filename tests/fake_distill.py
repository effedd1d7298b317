"""A stand-in for `mdistill run` in the scheduler tests (a real subprocess, seconds not minutes):
writes a run directory as a distillation does: the exported student (a copy of a tiny
sentence-transformers model) and a valid report.json whose summary metric the test chooses.

    python tests/fake_distill.py MODEL_DIR RUN_DIR METRIC [NAME [STUDENT,STUDENT,...]]

Several students are exported as a run exports them: ``models/<student>``.
"""

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import run_report

model, run_dir, metric = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
name = sys.argv[4] if len(sys.argv) > 4 else "tiny"
students = sys.argv[5].split(",") if len(sys.argv) > 5 else ["student"]
run_dir.mkdir(parents=True, exist_ok=True)
exports = {s: run_dir / "model" if len(students) == 1 else run_dir / "models" / s for s in students}
for out in exports.values():
    shutil.copytree(model, out, dirs_exist_ok=True)
(run_dir / "report.json").write_text(run_report(name, {s: (str(out), metric) for s, out in exports.items()}).model_dump_json())
print(f"[mdistill] fake run: {run_dir} teacher_space_top1={metric}")
