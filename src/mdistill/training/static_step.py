"""Training kernels of the static student, without Ray (Tokenlearn-style: the static model is
fitted to the teacher's cached sentence vectors, Tulkens & van Dongen 2024).

The trainable module is model2vec's own ``StaticModelForRegression`` (an ``EmbeddingBag`` over
the token vectors, trainable SIF token weights, no head: the student is in the teacher's
dimension). The rows are those of the embedding recipe (Reimers & Gurevych 2020): every English source
(``student(en) ≈ teacher(en)``) and every translation (``student(xx) ≈ teacher(en)``); the
second term aligns the languages, where static models fitted on English targets only are weak.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mdistill.losses.MSELoss import MSELoss


def trainable(static):
    """A model2vec ``StaticModel`` (``models/static.py``) as a torch module to fine-tune."""
    from model2vec.train import StaticModelForRegression

    return StaticModelForRegression.from_static_model(model=static, n_layers=0, out_dim=static.dim, normalize=True)


def encode(model, texts: Sequence[str]) -> torch.Tensor:
    """Sentence vectors with gradients (``model.encode`` runs under ``no_grad``); ``model`` may be
    wrapped in DDP (the tokenizer is the wrapped module's)."""
    return model(getattr(model, "module", model).tokenize(list(texts)))


def static_loss(model, texts: Sequence[str], targets: torch.Tensor, loss=None) -> torch.Tensor:
    """MSE of student(text) to the teacher's vector of the text's English source
    (``losses/MSELoss.py``): a batch holds English sources (target: their own teacher vector)
    and translations (target: their source's)."""
    return (loss or MSELoss())(encode(model, texts), targets)


def train_step(model, optimizer, scheduler, texts: Sequence[str], targets: np.ndarray, max_grad_norm: float = 1.0) -> float:
    """One optimizer step on a batch of sentences and the teacher vectors of their English sources."""
    model.train()
    value = static_loss(model, texts, torch.as_tensor(np.asarray(targets), dtype=torch.float32))
    value.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(value.detach())


def make_optimizer(model, *, lr: float, total_steps: int, warmup_ratio: float = 0.0):
    """Adam over the token vectors and weights (the ``EmbeddingBag`` gradients are dense: a few
    MB for a trimmed vocabulary), warm-up + linear decay."""
    from mdistill.training.step import warmup_linear

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(total_steps, warmup_ratio))


def to_static(model):
    """The fine-tuned module back as a ``model2vec.StaticModel`` (weights folded into the vectors)."""
    model.eval()
    return model.to_static_model()
