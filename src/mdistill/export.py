"""Export the trained student as a sentence-transformers directory.

Transformer (frozen bottom + trained top layers) -> mean Pooling -> Dense -> Normalize, with the
student's prompt as the default prompt, so ``SentenceTransformer(path).encode(texts)`` gives the
vectors mdistill trained and evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


def export_student(st_model, dense: nn.Linear | None, out_dir: str | Path, *, prompt: str, extra: dict | None = None) -> Path:
    from sentence_transformers import SentenceTransformer, models

    mods = [st_model[0], st_model[1]]  # Transformer, Pooling (carry the trained layers in place)
    if dense is not None:
        d = models.Dense(dense.in_features, dense.out_features, bias=True, activation_function=nn.Identity())
        with torch.no_grad():
            d.linear.weight.copy_(dense.weight)
            d.linear.bias.copy_(dense.bias)
        mods.append(d)
    mods.append(models.Normalize())
    prompts = {"query": prompt} if prompt else None
    out = SentenceTransformer(modules=mods, prompts=prompts, default_prompt_name="query" if prompt else None, device="cpu")
    out.save(str(out_dir))
    if extra:
        (Path(out_dir) / "mdistill.json").write_text(json.dumps(extra, indent=2, default=str))
    return Path(out_dir)
