"""Benchmark: the teacher pass on Ray clusters of 1 and 2 nodes of 1 CPU each, on this machine
(``ray.cluster_utils.Cluster``), against the ordinary single-node instance of 2 CPUs.

    python benchmarks/multinode_pass.py --texts 4000 --out benchmarks/results/multinode_pass.json

Each shape runs the recipe's teacher stage (``pipelines/run.py``, step 2: Distinct, plan, actor
pool, commit) cold, in a fresh subprocess, on the same English help paragraphs with the real
teacher (all-MiniLM-L6-v2), twice: with blocks of 1,024 rows (the recipe's) and of 64 rows. With
``--tiny`` the teacher is a random-init BERT of 1 layer and width 32 with MiniLM's tokenizer: the
encode then costs next to nothing, and the difference between the two block sizes, over the
difference in block count, is the cost of one block (actor call + object transfer + commit) on
that shape. Both "nodes" share the same 2 cores, so 2 nodes
cannot be faster than 1 node of 2 CPUs here; the speed-up itself needs real machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "local-2cpu": [],  # ray.init(num_cpus=2): the default run
    "1-node-1cpu": [1],
    "2-nodes-1cpu": [1, 1],
}


def english_paragraphs(n: int) -> list[str]:
    from mdistill.corpus.libreoffice import list_help_files, paragraphs

    root = Path(os.path.expanduser("~/.cache/mdistill/debian/libreoffice-help/usr/share/libreoffice/help/en-US"))
    if not root.is_dir():
        sys.exit(f"no LibreOffice help under {root}: run `make demo` (or mdistill corpus build) once first")
    out: dict[str, None] = {}
    for rel in list_help_files(root.parent):
        for text in paragraphs(root / rel).values():
            if len(text.split()) >= 3:
                out[text] = None
        if len(out) >= n:
            break
    return list(out)[:n]


def tiny_teacher(out: Path) -> str:
    """A random-init 1-layer BERT (width 32) with all-MiniLM-L6-v2's tokenizer, as a
    sentence-transformers directory: a teacher whose encode costs next to nothing."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mdistill.assets import resolve_model
    from mdistill.models.st_format import write_sentence_transformer

    tok = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2", out))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    return str(write_sentence_transformer(out / "tiny", BertModel(cfg, add_pooling_layer=False), tok, max_seq_length=128))


def child(shape: str, texts_file: Path, block_rows: int, model: str) -> dict:
    import ray

    from mdistill.config import TeacherConfig
    from mdistill.stages import cache_pass
    from mdistill.stages.teacher import open_teacher

    texts = json.loads(texts_file.read_text())
    t0 = time.perf_counter()
    cluster = None
    if SHAPES[shape]:
        from ray.cluster_utils import Cluster

        cpus = SHAPES[shape]
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus[0]})
        for c in cpus[1:]:
            cluster.add_node(num_cpus=c)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
    else:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    t_start = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as cache_dir:
        t1 = time.perf_counter()
        teacher = open_teacher(TeacherConfig(model=model, batch_size=64), Path(cache_dir))
        with teacher.cache.lock():
            distinct = cache_pass.Distinct(ray.data.from_items([{"text": t} for t in texts]), len(texts))
            todo = cache_pass.plan(teacher.cache, distinct, None, block_rows=block_rows)
            pool = teacher.pool_args(ray.nodes())
            vectors = todo.rows.map_batches(teacher.predictor, **pool) if todo.rows else None
            st = cache_pass.commit(todo, vectors, commit_rows=block_rows)
        wall = time.perf_counter() - t1
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    return {
        "shape": shape,
        "nodes": nodes,
        "block_rows": block_rows,
        "blocks": -(-st.distinct_texts // block_rows),
        "actors": pool["compute"].min_size,
        "threads_per_actor": pool["fn_constructor_kwargs"]["threads"],
        "cluster_start_s": round(t_start, 2),
        "pass_s": round(wall, 2),
        "texts_per_s": round(st.computed / wall, 1),
        "computed": st.computed,
        "computed_by_node": len(st.computed_by_node),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=4000)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tiny", action="store_true", help="a random-init 1-layer teacher: measures the per-block overhead")
    ap.add_argument("--child", nargs=4)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], Path(a.child[1]), int(a.child[2]), a.child[3])))
        return
    texts = english_paragraphs(a.texts)
    work = Path(tempfile.mkdtemp())
    f = work / "texts.json"
    f.write_text(json.dumps(texts))
    model = tiny_teacher(work) if a.tiny else "all-MiniLM-L6-v2"
    runs = []
    for shape in SHAPES:
        for block_rows in (1024, 64):
            out = subprocess.run(
                [sys.executable, __file__, "--child", shape, str(f), str(block_rows), model],
                capture_output=True,
                text=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            if out.returncode:
                raise RuntimeError(f"{shape} failed:\n{out.stderr[-3000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    per_block = {}
    for shape in SHAPES:
        big, small = (next(r for r in runs if r["shape"] == shape and r["block_rows"] == b) for b in (1024, 64))
        per_block[shape] = round((small["pass_s"] - big["pass_s"]) / (small["blocks"] - big["blocks"]) * 1000, 1)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} CPUs, no GPU",
        "texts": len(texts),
        "teacher": "random-init BERT, 1 layer, width 32 (MiniLM tokenizer)" if a.tiny else "all-MiniLM-L6-v2",
        "runs": runs,
        "overhead_ms_per_block": per_block,
    }
    print(json.dumps(result, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
