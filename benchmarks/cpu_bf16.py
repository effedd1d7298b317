"""bf16 autocast on CPU vs float32, for the two costs of the classify recipe on multilingual-e5-small
(random-init weights of the real architecture: speed does not depend on the values): the frozen
pass (the bottom 9 of 12 layers, inference) and one training step of the top 3 layers + the
mean-pooling layer + pooler + head from cached states (forward and backward).

    python benchmarks/cpu_bf16.py --out benchmarks/results/cpu_bf16.json

Only CPUs with native bf16 (AVX512-BF16 or AMX) gain; elsewhere bf16 is emulated and slower."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from mdistill.models.mean_pooling_layer import append_mean_pooling_layer
from mdistill.models.split import run_layers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=30, help="tokens per text (the help paragraphs' mean is ~30)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536, num_labels=7)
    model = append_mean_pooling_layer(BertForSequenceClassification(cfg)).train()
    bert = model.bert
    ids = torch.randint(5, 1000, (args.batch, args.tokens))
    mask = torch.ones_like(ids)
    params = [p for layer in bert.encoder.layer[9:12] for p in layer.parameters()] + [
        *bert.pooler.parameters(),
        *model.classifier.parameters(),
    ]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def frozen_pass() -> torch.Tensor:
        with torch.inference_mode():
            return run_layers(bert, bert.embeddings(input_ids=ids), mask, bert.encoder.layer[:9])

    states = frozen_pass().clone()

    def train_step() -> None:
        x = run_layers(bert, states, mask, bert.encoder.layer[9:])
        loss = model.classifier(model.dropout(bert.pooler(x))).float().logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    out = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "batch": args.batch, "tokens": args.tokens}
    out["native_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    for name, fn in (("frozen_pass_9_layers", frozen_pass), ("train_step_top3", train_step)):
        for bf16 in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for _ in range(3):
                    fn()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                s = (time.perf_counter() - t0) / args.steps
            out[f"{name}_{'bf16' if bf16 else 'fp32'}_texts_per_s"] = round(args.batch / s, 1)
        out[f"{name}_speedup"] = round(out[f"{name}_bf16_texts_per_s"] / out[f"{name}_fp32_texts_per_s"], 2)
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
