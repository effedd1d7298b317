"""Layer pruning: a student that keeps a chosen subset of the teacher-initialised encoder layers.

Starting a small student from a subset of a bigger model's layers (e.g. every other layer, as
DistilBERT does, Sanh et al. 2019, https://arxiv.org/abs/1910.01108) keeps the embeddings and
the kept layers' weights, so distillation starts far closer to the teacher than a random init.
The result is an ordinary sentence-transformers directory (same tokenizer, pooling, normalize).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def prune_layers(model_dir: str | Path, keep: Sequence[int], out_dir: str | Path) -> dict:
    """Write a copy of a sentence-transformers model with only the encoder layers ``keep``
    (0-based, in the given order); returns layer and parameter counts before and after."""
    from sentence_transformers import SentenceTransformer
    from torch import nn

    st = SentenceTransformer(str(model_dir), device="cpu")
    hf = st[0].auto_model
    layers = hf.encoder.layer
    n = len(layers)
    if not keep or any(not 0 <= i < n for i in keep) or len(set(keep)) != len(keep):
        raise ValueError(f"keep must list distinct layer indices in [0, {n}), got {list(keep)}")
    params_before = sum(p.numel() for p in st.parameters())
    hf.encoder.layer = nn.ModuleList(layers[i] for i in keep)
    for new_i, layer in enumerate(hf.encoder.layer):  # layer-indexed caches/attention use the new position
        attn = getattr(getattr(layer, "attention", None), "self", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_i
    hf.config.num_hidden_layers = len(keep)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    st.save(str(out_dir))
    return {
        "layers_before": n,
        "layers_after": len(keep),
        "kept": list(keep),
        "params_before": params_before,
        "params_after": sum(p.numel() for p in st.parameters()),
    }
