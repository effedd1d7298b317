"""Benchmark the teacher batch kernel (no Ray) against ``SentenceTransformer.encode`` on one device.

    python benchmarks/teacher_kernel.py --texts texts.json --n 20000 --batch-size 256 --out benchmarks/results/teacher_kernel_<device>.json

Runs on a machine without Ray (e.g. a GPU box): ``mdistill.encode.encode_batch`` (token-count
batching, bf16 autocast on GPU) vs ``encode`` (fp32, and bf16 autocast too for a like-for-like
number). Reports sentences/s, tokens/s (real tokens, no padding) and, on GPU, the fraction of the
bf16 roofline, counting 2 x parameters FLOPs per token (attention's L^2 term ignored).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

BF16_DENSE_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}  # vendor peak, dense


def main() -> None:
    from sentence_transformers import SentenceTransformer

    from mdistill.encode import encode_batch

    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=Path, help="JSON list of sentences (default: synthetic sentences of 3-60 words)")
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    from mdistill.assets import resolve_model

    texts = json.loads(a.texts.read_text())[: a.n] if a.texts else None
    model = SentenceTransformer(resolve_model(a.model, Path("/tmp")))
    model.max_seq_length = 128
    if texts is None:
        rng = np.random.default_rng(0)
        words = "open save the file cell sheet table chart page text format print window menu button dialog select insert value".split()
        texts = [" ".join(rng.choice(words, rng.integers(3, 61))) + f" {i}." for i in range(a.n)]
    dev = model.device
    n_tokens = sum(min(model.max_seq_length, len(x)) for x in model.tokenizer(texts)["input_ids"])
    params = sum(p.numel() for p in model.parameters())

    def timed(fn):
        fn(texts[: min(len(texts), 2 * a.batch_size)])  # warm-up: kernels, allocator
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn(texts)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, out

    runs = {}
    t_enc, ref = timed(lambda x: model.encode(x, batch_size=a.batch_size, convert_to_numpy=True))
    runs["encode_fp32"] = t_enc
    if dev.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            runs["encode_bf16_autocast"], _ = timed(lambda x: model.encode(x, batch_size=a.batch_size, convert_to_numpy=True))
    t_k, out = timed(lambda x: encode_batch(model, x, batch_size=a.batch_size, prompt=""))
    runs["mdistill_encode_batch"] = t_k
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    peak = next((v for k, v in BF16_DENSE_TFLOPS.items() if k in name), None)
    res = {
        "device": name,
        "torch": torch.__version__,
        "sentences": len(texts),
        "real_tokens": n_tokens,
        "parameters": params,
        "max_abs_diff_vs_encode": float(np.abs(out - ref).max()),
        "runs": {
            k: {
                "seconds": v,
                "sentences_per_s": len(texts) / v,
                "tokens_per_s": n_tokens / v,
                "roofline_fraction": (2 * params * n_tokens / v) / (peak * 1e12) if peak else None,
            }
            for k, v in runs.items()
        },
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(res, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
