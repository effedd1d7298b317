"""Batch encoding kernels (no Ray): the teacher pass, baselines and evaluation call these.

Texts are sorted by token count before batching so each batch pads little; outputs come back in
input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch

from mdistill.log import get_logger

log = get_logger("encode")


def load_sentence_transformer(path_or_id: str, device: str | None = None, max_seq_length: int | None = None):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path_or_id, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if max_seq_length is not None:
        limit = position_limit(model)
        # longer inputs would index past the position embeddings (an opaque CUDA/index error mid-pass)
        if limit is not None and max_seq_length > limit:
            raise ValueError(
                f"max_seq_length {max_seq_length} is above the position limit {limit} of {path_or_id}: "
                f"set teacher.max_seq_length / student.max_seq_length to at most {limit}"
            )
        model.max_seq_length = max_seq_length
    return model.eval()


def position_limit(model) -> int | None:
    """Tokens the model's position embeddings cover (None: unknown). RoBERTa-style models (XLM-R)
    start positions after the padding index, so they cover ``max_position_embeddings - pad - 1``."""
    config = getattr(getattr(model[0], "auto_model", None), "config", None) if len(model) else None
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int):
        return None
    if "roberta" in (getattr(config, "model_type", "") or "") and isinstance(getattr(config, "pad_token_id", None), int):
        return n - config.pad_token_id - 1
    return n


def default_prompt(model) -> str:
    name = getattr(model, "default_prompt_name", None)
    return model.prompts.get(name, "") if name else ""


def length_order(texts: Sequence[str]) -> np.ndarray:
    return np.argsort([len(t) for t in texts], kind="stable")


def token_length_order(model, texts: Sequence[str]) -> np.ndarray:
    """Order of ``texts`` by their token count after truncation (a sentence-transformers model).

    Sorting by characters, as ``SentenceTransformer.encode`` does, pads batches of real corpus text
    to 1.69x its tokens (code, paths and CJK break the chars/token ratio); by tokens, 1.003x
    (measured on 50,000 sentences of the built-in corpus, batches of 64). One extra pass of the
    Rust tokenizer costs a few percent of a CPU forward pass."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return length_order(texts)
    ids = tok(list(texts), truncation=True, max_length=model.max_seq_length, add_special_tokens=True)["input_ids"]
    return np.argsort([len(x) for x in ids], kind="stable")


def bf16_autocast(device: torch.device | str, cpu_bf16: bool = False):
    """The autocast context of a forward or training step: bf16 on GPU; on CPU only when asked
    (``train.cpu_bf16``) and the CPU computes bf16 natively (AVX512-BF16 / AMX, oneDNN's check),
    else float32 with a warning: emulated bf16 is slower than float32."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu_bf16 and kind == "cpu":
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.autocast("cpu", dtype=torch.bfloat16)
        log.warning("train.cpu_bf16: this CPU has no native bf16; running float32")
    return nullcontext()


@torch.inference_mode()
def encode_batch(model, texts: Sequence[str], *, batch_size: int = 64, prompt: str | None = None, autocast: bool = True) -> np.ndarray:
    """Sentence embeddings exactly as the model defines them (pooling, normalisation), float32.

    ``prompt=None`` uses the model's default prompt, like ``SentenceTransformer.encode``.
    On GPU the forward runs under bf16 autocast.
    """
    prompt = default_prompt(model) if prompt is None else prompt
    device = model.device
    out = np.empty((len(texts), model.get_sentence_embedding_dimension()), dtype=np.float32)
    order = token_length_order(model, [prompt + t for t in texts])
    use_amp = autocast and device.type == "cuda"
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        features = model.preprocess([prompt + texts[i] for i in idx])
        features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            emb = model(features)["sentence_embedding"]
        out[idx] = emb.float().cpu().numpy()
    return out


def load_classifier(path_or_id: str, device: str | None = None):
    """A sequence-classification teacher and its tokenizer (any HF id or local path)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForSequenceClassification.from_pretrained(path_or_id).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path_or_id)


@torch.inference_mode()
def classify_batch(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_seq_length: int = 128,
    prompt: str = "",
    autocast: bool = True,
    cpu_bf16: bool = False,
) -> np.ndarray:
    """Raw logits (float32, input order), length-sorted batches; bf16 autocast on GPU, and on a
    CPU with native bf16 when ``cpu_bf16`` (``bf16_autocast``)."""
    device = next(model.parameters()).device
    out = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    order = length_order(texts)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([prompt + texts[i] for i in idx], padding=True, truncation=True, max_length=max_seq_length, return_tensors="pt").to(
            device
        )
        # float32 on CPU unless asked, even inside a caller's autocast (as before cpu_bf16 existed)
        with (
            bf16_autocast(device, cpu_bf16)
            if autocast and (device.type == "cuda" or cpu_bf16)
            else torch.autocast(device.type, enabled=False)
        ):
            logits = model(**enc).logits
        out[idx] = logits.float().cpu().numpy()
    return out
