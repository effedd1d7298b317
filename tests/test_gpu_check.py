"""``benchmarks/gpu_check.py`` (the GPU machine's script: no Ray) runs on CPU: the teacher kernel
against ``SentenceTransformer.encode``, a bf16-autocast training step against fp32 (frozen-bottom
top and full fine-tune), and DeepSpeed ZeRO-2 in one process against plain torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_gpu_check_runs_on_cpu(tmp_path, tiny_models):
    out = tmp_path / "gpu_check.json"
    args = ["--device", "cpu", "--teacher", str(tiny_models["teacher"]), "--student", str(tiny_models["student"])]
    args += ["--sentences", "256", "--batch-size", "64", "--steps", "6", "--out", str(out)]
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), *args], capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["ok"] and res["device"] == "cpu"
    assert res["encode_teacher"]["mdistill_encode_batch"]["max_abs_diff_to_fp32"] < 1e-5
    for mode in ("top2_on_states", "full_finetune"):
        step = res["train_step"][mode]
        assert step["loss_fp32"][-1] < step["loss_fp32"][0] and step["max_rel_loss_diff"] < 0.1
    ds = res["deepspeed_zero2"]
    assert ds["loss_deepspeed"][-1] < ds["loss_deepspeed"][0] and ds["max_rel_loss_diff"] < 1e-4  # fp32 on CPU: DeepSpeed = torch
