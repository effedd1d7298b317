"""GPU check of mdistill's kernels, runnable without Ray (a GPU machine's image may have neither
Ray nor DeepSpeed; DeepSpeed is optional here):

    python benchmarks/gpu_check.py --device cuda --tokenizers .gpu_assets --sentences 100000 --out benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --teacher PATH --student PATH --sentences 256 --steps 6   # what the tests run

1. Teacher kernel: ``mdistill.encode.encode_batch`` (token-count batches, bf16 autocast on GPU)
   against ``SentenceTransformer.encode`` in fp32 and in bf16 on the same device and sentences:
   sentences/s, tokens/s (real tokens), the fraction of the bf16 roofline (2 x parameters FLOPs
   per token; also without the embedding matrix, which is a lookup), max abs diff to fp32.
2. A training step, frozen-bottom top (``TopStudent`` on bottom states) and full fine-tune
   (``FullStudent`` on token ids), under bf16 autocast vs fp32 from the same weights: the loss
   curves agree, samples/s.
3. DeepSpeed ZeRO-2 in one process (bf16 on GPU, as the run configures it): DeepSpeed casts the
   model to bf16, ``training.step.to_device`` casts the float inputs, the loss decreases and
   follows plain torch.

Models: the real architectures of all-MiniLM-L6-v2 (teacher) and multilingual-e5-small (student)
with random weights (``--tokenizers DIR`` holds their tokenizers: ``minilm/`` and ``e5/``), or any
sentence-transformers directories (``--teacher``, ``--student``). Every check returns ``ok``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

BF16_DENSE_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}  # vendor peak, dense
ARCHS = {  # (vocab from the tokenizer) hidden, layers, heads, intermediate, max positions, prompt
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512),
    "e5": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536, max_position_embeddings=514),
}


def random_model(arch: str, tokenizer_dir: Path, out: Path, prompt: str) -> Path:
    """A sentence-transformers directory: the architecture, random weights, the real tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mdistill.models.st_format import write_sentence_transformer

    if not (out / "modules.json").exists():
        torch.manual_seed(0)
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        model = BertModel(BertConfig(vocab_size=len(tok), **ARCHS[arch]), add_pooling_layer=False)
        write_sentence_transformer(out, model, tok, max_seq_length=128 if arch == "minilm" else 64, prompt=prompt)
    return out


def corpus_like(n: int, seed: int = 0) -> list[str]:
    """Help-text-like sentences of 3-60 words (the built-in corpus' length spread)."""
    rng = np.random.default_rng(seed)
    words = "open save the file cell sheet table chart page text format print window menu button dialog select insert value".split()
    return [" ".join(rng.choice(words, rng.integers(3, 61))) + f" {i}." for i in range(n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, warm):
    fn(warm)  # kernels, allocator
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


def check_encode(model_dir: str, texts: list[str], device: torch.device, batch_size: int) -> dict:
    from mdistill.encode import encode_batch, load_sentence_transformer

    model = load_sentence_transformer(model_dir, device=str(device))
    tokens = sum(min(model.max_seq_length, len(x)) for x in model.tokenizer(texts)["input_ids"])
    params = sum(p.numel() for p in model.parameters())
    body = params - model[0].auto_model.get_input_embeddings().weight.numel()
    warm = texts[: 2 * batch_size]
    runs = {}
    t, ref = _timed(lambda x=texts: model.encode(x, batch_size=batch_size, convert_to_numpy=True), device, warm)
    runs["st_encode_fp32"] = (t, ref)
    runs["mdistill_encode_batch"] = _timed(lambda x=texts: encode_batch(model, x, batch_size=batch_size), device, warm)  # bf16 on GPU
    if device.type == "cuda":
        half = copy.deepcopy(model).to(torch.bfloat16)
        runs["st_encode_bf16"] = _timed(lambda x=texts: half.encode(x, batch_size=batch_size, convert_to_numpy=True), device, warm)
        half16 = copy.deepcopy(model).half()
        runs["st_encode_fp16"] = _timed(lambda x=texts: half16.encode(x, batch_size=batch_size, convert_to_numpy=True), device, warm)
    peak = next((v for k, v in BF16_DENSE_TFLOPS.items() if device.type == "cuda" and k in torch.cuda.get_device_name()), None)
    out = {"sentences": len(texts), "tokens": tokens, "params": params, "params_without_embeddings": body, "batch_size": batch_size}
    for name, (t, v) in runs.items():
        r = {
            "seconds": round(t, 3),
            "sentences_per_s": round(len(texts) / t, 1),
            "tokens_per_s": round(tokens / t),
            "max_abs_diff_to_fp32": float(np.abs(v - ref).max()),
        }
        if peak:
            r["roofline_fraction"] = round(2 * params * tokens / t / (peak * 1e12), 4)
            r["roofline_fraction_without_embeddings"] = round(2 * body * tokens / t / (peak * 1e12), 4)
        out[name] = r
    best_st = max(v["sentences_per_s"] for k, v in out.items() if k.startswith("st_encode"))
    out["speedup_vs_best_st"] = round(out["mdistill_encode_batch"]["sentences_per_s"] / best_st, 3)
    out["ok"] = out["mdistill_encode_batch"]["max_abs_diff_to_fp32"] < (2e-2 if device.type == "cuda" else 1e-5)
    return out


def _student_batches(student_dir: str, texts: list[str], batch_size: int, frozen: int):
    """(top states batch, ids batch, targets) from the untrained student, like the run's rows."""
    from mdistill.encode import load_sentence_transformer
    from mdistill.models.split import bottom_states, pad_ids, pad_states

    st = load_sentence_transformer(student_dir, device="cpu")
    states, pooled = bottom_states(st, texts, frozen, prompt="query: ", batch_size=batch_size)
    ids = [np.asarray(x) for x in st.tokenizer(["query: " + t for t in texts], truncation=True, max_length=st.max_seq_length)["input_ids"]]
    rng = np.random.default_rng(0)
    target = torch.nn.functional.normalize(
        torch.tensor(pooled) + 0.1 * torch.tensor(rng.normal(size=pooled.shape), dtype=torch.float32), dim=-1
    )
    return st, pad_states(states), pad_ids(ids, st.tokenizer.pad_token_id or 0), target


def _no_dropout(module: torch.nn.Module) -> torch.nn.Module:
    """Dropout off: one batch repeated, so the loss has to fall step by step and precisions compare."""
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return module


def _train(module, inputs, target, device, steps: int, autocast: bool, lr: float = 1e-3) -> tuple[list[float], float]:
    from mdistill.losses import MSELoss
    from mdistill.training.step import make_optimizer, to_device, train_step

    module = _no_dropout(module.to(device).train())
    opt, sched = make_optimizer(module, lr=lr, head_lr=None, weight_decay=0.0, total_steps=steps, warmup_ratio=0.0)
    x, m, y = to_device((*inputs, target), device)
    losses, t0 = [], time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            losses.append(train_step(module, MSELoss(), opt, sched, (x, m, y), 1.0))
    _sync(device)
    return losses, len(y) * steps / (time.perf_counter() - t0)


def check_train_step(student_dir: str, texts: list[str], device: torch.device, steps: int, batch_size: int) -> dict:
    from mdistill.models.split import FullStudent, TopStudent

    st, states, ids, target = _student_batches(student_dir, texts[:batch_size], batch_size, frozen=len(st_layers(student_dir)) - 2)
    out = {"batch_size": len(target), "steps": steps}
    # Full fine-tune moves the embeddings too: at the top layers' 1e-3 it overshoots within a few steps.
    modes = (("top2_on_states", lambda s: TopStudent(s, 2), states, 1e-3), ("full_finetune", FullStudent, ids, 1e-4))
    for mode, make, inputs, lr in modes:
        runs = {}
        for precision, amp in (("fp32", False), ("bf16_autocast", True)):
            torch.manual_seed(0)
            runs[precision] = _train(make(copy.deepcopy(st)), inputs, target, device, steps, amp, lr)
        fp32, bf16 = runs["fp32"][0], runs["bf16_autocast"][0]
        rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(fp32, bf16))
        out[mode] = {
            "loss_fp32": fp32,
            "loss_bf16": bf16,
            "max_rel_loss_diff": rel,
            "samples_per_s_fp32": round(runs["fp32"][1], 1),
            "samples_per_s_bf16": round(runs["bf16_autocast"][1], 1),
            "ok": fp32[-1] < fp32[0] and bf16[-1] < bf16[0] and rel < 0.1,
        }
    out["ok"] = all(out[m]["ok"] for m in ("top2_on_states", "full_finetune"))
    return out


def st_layers(student_dir: str):
    from transformers import AutoConfig

    return range(AutoConfig.from_pretrained(student_dir).num_hidden_layers)


def check_deepspeed(student_dir: str, texts: list[str], device: torch.device, steps: int, batch_size: int) -> dict:
    try:
        import deepspeed
    except ImportError:
        return {"skipped": "deepspeed is not installed", "ok": True}
    import shutil

    import torch.distributed as dist

    from mdistill.losses import MSELoss
    from mdistill.models.split import TopStudent
    from mdistill.training.step import deepspeed_config, deepspeed_step, make_optimizer, to_device

    if not dist.is_initialized():  # one process: the group DeepSpeed (and Ray Train, in a run) expects
        for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
            os.environ.setdefault(k, v)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    st, states, _, target = _student_batches(student_dir, texts[:batch_size], batch_size, frozen=len(st_layers(student_dir)) - 2)
    bf16 = device.type == "cuda"  # what the run configures: bf16 on GPU, fp32 on CPU
    torch.manual_seed(0)
    ref_model = TopStudent(copy.deepcopy(st), 2).to(device)
    ref, _ = _train(ref_model, states, target, device, steps, autocast=bf16)
    torch.manual_seed(0)
    model = _no_dropout(TopStudent(copy.deepcopy(st), 2).to(device))
    opt, sched = make_optimizer(model, lr=1e-3, head_lr=None, weight_decay=0.0, total_steps=steps, warmup_ratio=0.0)
    cfg = deepspeed_config(batch_size=len(target), grad_accum=1, world_size=1, zero_stage=2, max_grad_norm=1.0, bf16=bf16)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=cfg)
    batch = to_device((*states, target), device, torch.bfloat16 if bf16 else None)  # the fix: float inputs in the engine's dtype
    losses = [deepspeed_step(engine, MSELoss(), batch) for _ in range(steps)]
    rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref, losses))
    return {
        "zero_stage": 2,
        "bf16": bf16,
        "model_dtype": str(next(engine.module.parameters()).dtype),
        "loss_deepspeed": losses,
        "loss_torch": ref,
        "max_rel_loss_diff": rel,
        "ok": losses[-1] < losses[0] and rel < (0.1 if bf16 else 1e-4),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokenizers", type=Path, help="folder with minilm/ and e5/ tokenizers (real architectures, random weights)")
    ap.add_argument("--teacher", help="a sentence-transformers directory instead of the random MiniLM")
    ap.add_argument("--student", help="a sentence-transformers directory instead of the random e5-small")
    ap.add_argument("--sentences", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mdistill-gpu-check"))
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    teacher = a.teacher or str(random_model("minilm", a.tokenizers / "minilm", a.work / "minilm-random", ""))
    student = a.student or str(random_model("e5", a.tokenizers / "e5", a.work / "e5-random", "query: "))
    texts = corpus_like(a.sentences)
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "encode_teacher": check_encode(teacher, texts, device, a.batch_size),
        "encode_student": check_encode(student, texts, device, a.batch_size),
        "train_step": check_train_step(student, texts, device, a.steps, min(a.batch_size, 64)),
        "deepspeed_zero2": check_deepspeed(student, texts, device, a.steps, min(a.batch_size, 64)),
    }
    result["ok"] = all(v["ok"] for v in result.values() if isinstance(v, dict))
    text = json.dumps(result, indent=2)
    if a.out:
        a.out.write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    raise SystemExit(0 if main()["ok"] else 1)
