"""Benchmark: student training throughput, mdistill (Ray Train) vs sentence-transformers'
``SentenceTransformerTrainer`` with ``losses.MSELoss``, on the same data, model and machine.

    python benchmarks/train_throughput.py --corpus ~/.cache/mdistill/corpora/<fp> --rows 1024 \
        --out benchmarks/results/train_throughput.json

Data: ``--rows`` training rows of the corpus (English sources and their translations, as the
run trains on them), each with its teacher vector (all-MiniLM-L6-v2, computed once up front).
Model: multilingual-e5-small (12 layers, 384 dimensions = the teacher's, so no head is needed),
"query: " prompt, max 64 tokens, batch 32, AdamW lr 1e-4, one epoch, all torch threads.

Like for like: every side trains the 12 transformer layers with the embedding matrix frozen (the
peer too: its default trains the 96M-parameter embedding matrix, measured as a separate line).
Sides, each in a fresh subprocess, its process tree's peak memory sampled:
- ``st``: SentenceTransformerTrainer, embeddings frozen; samples/s = rows / ``train_runtime``.
- ``st_all``: the same with every parameter trained (the peer's default).
- ``md1``: mdistill, one Ray Train worker, DDP. samples/s = rows / (frozen pass + training loop
  from its first batch), the frozen pass being tokenisation + embedding lookup here
  (``train_layers`` = 12). Start-up costs (Ray, the worker group, the data pipeline's first
  batch) are reported apart, as the peer's model loading and dataset building are not timed either.
- ``md2``: two workers, DDP (gloo). ``md2_zero2``: two workers, DeepSpeed ZeRO-2.
- ``md1_top4``: mdistill's default shape (top 4 layers trained on cached states of the bottom 8).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

from memory import run_child  # benchmarks/memory.py

PROMPT = "query: "
SIDES = ("st", "st_all", "md1", "md2", "md2_zero2", "md1_top4")


def prepare(corpus: Path, rows: int, work: Path) -> Path:
    """Training rows (text, teacher vector of the English source) as Parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import torch

    from mdistill.assets import resolve_model
    from mdistill.encode import encode_batch, load_sentence_transformer
    from mdistill.teacher.cache import embeddings_table

    out = work / f"data-{rows}.parquet"
    if out.exists():
        return out
    torch.set_num_threads(os.cpu_count() or 2)
    t = pq.read_table(corpus / "pairs", columns=["en", "lang", "text", "split"])
    t = t.filter(pc.equal(t.column("split"), "train")).to_pandas().sort_values(["en", "lang"]).drop_duplicates(["en", "lang"])
    ens = list(dict.fromkeys(t.en))[: rows // 3]
    pairs = t[t.en.isin(set(ens))]
    texts = (ens + list(pairs.text))[:rows]
    sources = (ens + list(pairs.en))[:rows]
    teacher = load_sentence_transformer(resolve_model("all-MiniLM-L6-v2", Path("~/.cache/mdistill").expanduser()), device="cpu")
    vec = dict(zip(ens, encode_batch(teacher, ens, batch_size=64)))
    target = np.stack([vec[s] for s in sources])
    order = np.random.default_rng(0).permutation(len(texts))  # mixed languages, as a trainer sees them
    table = pa.table(
        {"text": [texts[i] for i in order], "target": embeddings_table([sources[i] for i in order], target[order]).column("embedding")}
    )
    pq.write_table(table, out)
    return out


def child_st(data: Path, batch: int, lr: float, freeze_embeddings: bool) -> dict:
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments, losses

    from mdistill.assets import resolve_model
    from mdistill.encode import load_sentence_transformer
    from mdistill.teacher.cache import embedding_matrix

    torch.set_num_threads(os.cpu_count() or 2)
    t = pq.read_table(data)
    ds = Dataset.from_dict(
        {"sentence": [PROMPT + x for x in t.column("text").to_pylist()], "label": embedding_matrix(t.column("target")).tolist()}
    )
    model = load_sentence_transformer(
        resolve_model("multilingual-e5-small", Path("~/.cache/mdistill").expanduser()), device="cpu", max_seq_length=64
    )
    if freeze_embeddings:
        model[0].auto_model.embeddings.requires_grad_(False)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(data.parent / "st-out"),
        num_train_epochs=1,
        per_device_train_batch_size=batch,
        learning_rate=lr,
        warmup_ratio=0.05,
        save_strategy="no",
        report_to="none",
        logging_steps=10**6,
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=losses.MSELoss(model))
    t0 = time.time()
    out = trainer.train()
    wall = time.time() - t0
    return {
        "rows": len(ds),
        "train_runtime_s": out.metrics["train_runtime"],
        "wall_s": wall,
        "samples_per_s": len(ds) / out.metrics["train_runtime"],
        "final_loss": out.training_loss,
    }


def child_md(data: Path, batch: int, lr: float, workers: int, strategy: str, train_layers: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import torch
    from ray.train.torch import TorchTrainer

    from mdistill.assets import resolve_model
    from mdistill.config import TrainConfig
    from mdistill.encode import load_sentence_transformer
    from mdistill.models.split import bottom_states
    from mdistill.stages import train as stage
    from mdistill.stages.student import TrainingSet
    from mdistill.teacher.cache import text_key
    from mdistill.training.loop import LoopConfig, train_loop_per_worker

    torch.set_num_threads(os.cpu_count() or 2)
    work = data.parent / f"md-{workers}-{strategy}-{train_layers}-{int(time.time())}"
    states_dir = work / "training_set" / "split=train"
    states_dir.mkdir(parents=True)
    path = resolve_model("multilingual-e5-small", Path("~/.cache/mdistill").expanduser())
    st = load_sentence_transformer(path, device="cpu", max_seq_length=64)
    t = pq.read_table(data)
    n = t.num_rows
    # The frozen pass (what the run does once per sentence and caches): tokenise, embed, and run
    # the frozen bottom layers. Part of the cost, so part of the measured time.
    t0 = time.time()
    hidden, pooled = bottom_states(st, t.column("text").to_pylist(), 12 - train_layers, prompt=PROMPT)
    frozen_s = time.time() - t0
    table = (
        t.append_column("key", pa.array([text_key(x) for x in t.column("text").to_pylist()]))
        .append_column("en", pa.array([""] * n))
        .append_column("lang", pa.array(["xx"] * n))
    )
    table = table.append_column("hidden", pa.array([h.tobytes() for h in hidden], pa.binary()))
    table = table.append_column("length", pa.array([len(h) for h in hidden], pa.int32())).append_column(
        "dim", pa.array([384] * n, pa.int32())
    )
    for i in range(0, n, 2048):
        pq.write_table(table.slice(i, 2048), states_dir / f"part-{i // 2048:05d}.parquet")
    del hidden, pooled, table

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    tc = TrainConfig(
        workers=workers, epochs=1, batch_size=batch, lr=lr, warmup_ratio=0.05, strategy="deepspeed" if strategy.startswith("zero") else "ddp",
        zero_stage=int(strategy[-1]) if strategy.startswith("zero") else 2, bucket_rows=1024, log_every=10**6, resume=False,
    )  # fmt: skip
    t1 = time.time()
    ts = TrainingSet(work / "training_set", "bench", n, n, 0, states=True)
    scaling, threads = stage.scaling(tc)
    loop = LoopConfig(
        student_path=path, train_layers=train_layers, dropout=0.0, prompt=PROMPT, max_seq_length=64, head_path=None, dev_dir=None,
        train_rows=n, threads=threads, seed=0, train=tc,
    )  # fmt: skip
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"loop": loop.model_dump()}, scaling_config=scaling, datasets={"train": ts.train()},
        dataset_config=stage.data_config(), run_config=stage.run_config("bench", work / "ray_train", tc),
    )  # fmt: skip
    result = trainer.fit()
    fit_s = time.time() - t1
    logs = stage.load_trained(result).logs
    loop_rate = logs.history[-1].samples_per_s  # from the first batch on
    loop_s = n / loop_rate
    ray.shutdown()
    return {
        "rows": n,
        "frozen_pass_s": frozen_s,
        "train_loop_s": loop_s,
        "first_batch_wait_s": logs.history[-1].first_batch_s,  # Ray Data start-up inside the worker
        "fit_wall_s": fit_s,  # + Ray Train start-up: worker group, process group, DeepSpeed init
        "samples_per_s": n / (frozen_s + loop_s),
        "loop_samples_per_s": loop_rate,
        "final_loss": logs.history[-1].loss,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, help="a corpus folder built by `mdistill corpus build`")
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--work", type=Path, default=Path("/tmp/mdistill-bench-train"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", nargs="+")
    a = ap.parse_args()
    if a.child:
        side, data = a.child[0], Path(a.child[1])
        if side.startswith("st"):
            res = child_st(data, a.batch, a.lr, freeze_embeddings=side == "st")
        else:
            workers = 2 if side.startswith("md2") else 1
            res = child_md(data, a.batch, a.lr, workers, "zero2" if "zero2" in side else "ddp", 4 if side.endswith("top4") else 12)
        print(json.dumps(res))
        return
    a.work.mkdir(parents=True, exist_ok=True)
    data = prepare(a.corpus.expanduser(), a.rows, a.work)
    results = {}
    for side in a.sides.split(","):
        print(f"[bench] {side} ...", flush=True)
        results[side] = run_child(
            [__file__, "--rows", str(a.rows), "--batch", str(a.batch), "--lr", str(a.lr), "--child", side, str(data)], side
        )
        print(f"[bench] {side}: {json.dumps(results[side])}", flush=True)
    if "st" in results:
        for r in results.values():
            r["ratio_vs_st"] = round(r["samples_per_s"] / results["st"]["samples_per_s"], 3)
    report = {
        "date": str(date.today()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "command": " ".join(["python", *sys.argv]),
        "rows": a.rows,
        "batch": a.batch,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if a.out:
        a.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
