"""A stopped ``mdistill run`` resumes: the driver (and the local Ray it started, its whole process
group) is SIGKILLed mid-training of a real run (tiny models, corpus, teacher and frozen pass
included); the same command run again starts at the checkpoint's step and ends like a run that
was never interrupted. The student is a full fine-tune (``train_layers: all``: every layer and the
embeddings, trained from tokenised text), the mode for GPUs; the end-to-end test covers the
frozen-bottom mode."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdistill.report import load_report
from mdistill.training.checkpoint import read_state

from conftest import tiny_run_overrides

REPO = Path(__file__).resolve().parents[1]


def _command(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "mdistill.cli", "run", "configs/default.yaml", *overrides]


def _registered_checkpoint(run_path: Path) -> Path | None:
    """The latest checkpoint the Ray Train controller registered (what a restart resumes from)."""
    try:
        latest = json.loads((run_path / "checkpoint_manager_snapshot.json").read_text())["latest_checkpoint_result"]
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or being rewritten
        return None
    return run_path / latest["checkpoint_dir_name"] if latest else None


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(1200)
def test_killed_driver_rerun_resumes_at_the_checkpoint_step(tmp_path, tiny_models, pairs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    tiny = [
        *tiny_run_overrides(tmp_path, tiny_models, pairs.to_dict("records")),
        "student.train_layers=all",
        "train.workers=1",
        "train.epochs=2",
        "train.batch_size=8",
        "train.checkpoint_every=20",
        "train.log_every=10",
    ]
    killed_overrides = [*tiny, f"output_dir={tmp_path / 'killed'}"]
    run_path = tmp_path / "killed" / "ray_train" / "student"

    # 1. Start the run in its own process group; SIGKILL the group once a mid-training checkpoint is registered.
    log1 = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(_command(killed_overrides), cwd=REPO, env=env, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    deadline, ckpt = time.time() + 600, None
    while time.time() < deadline and first.poll() is None:
        ckpt = _registered_checkpoint(run_path)
        if ckpt is not None:
            os.killpg(first.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    first.wait(60)
    assert ckpt is not None, f"no checkpoint registered before the run ended:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
    time.sleep(3)  # the killed driver's Ray processes go with it (fate sharing)
    ckpt = _registered_checkpoint(run_path)  # the latest one registered before the kill
    state = read_state(ckpt)
    assert not state.final, "killed after training finished: nothing to resume"
    step = state.micro  # grad_accum 1: one micro-batch per optimizer step

    # 2. The same command again: the caches and the training set are reused, training resumes.
    second = subprocess.run(_command(killed_overrides), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    resumed = re.findall(r"\[mdistill\.train\] resumed at step (\d+)/(\d+)", second.stdout + second.stderr)
    assert resumed and int(resumed[0][0]) == step, (resumed, step)
    print(f"killed at checkpoint step {step}; the re-run resumed at step {resumed[0][0]} of {resumed[0][1]}")

    # 3. An uninterrupted run of the same settings (caches shared) ends at the same place, within noise.
    ref = subprocess.run(
        _command([*tiny, f"output_dir={tmp_path / 'clean'}"]), cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert ref.returncode == 0, ref.stdout[-4000:]
    a, b = load_report(tmp_path / "killed"), load_report(tmp_path / "clean")
    assert a.students["student"].train_layers == "all" and a.students["student"].export.max_abs_diff < 1e-3
    la, lb = a.students["student"].logs, b.students["student"].logs
    assert la.resumed_at == [step] and lb.resumed_at == []
    assert la.history[-1].step == lb.history[-1].step
    assert la.dev[-1].pooled_mse100 == pytest.approx(lb.dev[-1].pooled_mse100, rel=0.05)
    assert la.dev[-1].pooled_teacher_space_top1 == pytest.approx(lb.dev[-1].pooled_teacher_space_top1, abs=0.05)
    assert a.teacher_cache.computed == 0 and a.students["student"].states_cache is None  # the re-run computed nothing again
    print(json.dumps({"killed_run_final_dev": la.dev[-1].model_dump(), "clean_run_final_dev": lb.dev[-1].model_dump()}))
