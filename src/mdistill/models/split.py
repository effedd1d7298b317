"""A student split in two: a frozen bottom computed once, a trainable top trained many times.

On CPU the transformer forward is compute-bound, so the cheapest training step is the one that
does not recompute what does not change. The bottom ``num_layers - train_layers`` layers of the
student are frozen: their output (per-token hidden states) is computed once per sentence and
cached. Training then runs only the top layers, mean pooling, the Dense head and the
normalisation - the same modules, in the same order, as the exported sentence-transformers model,
so ``SentenceTransformer(exported).encode`` equals ``TopStudent(bottom_states(...))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from mdistill.encode import bf16_autocast, token_length_order


def _bert(st_model):
    """The Hugging Face encoder inside a SentenceTransformer (Transformer module first)."""
    return st_model[0].auto_model


def encoder_layers(bert) -> nn.ModuleList:
    return bert.encoder.layer


def run_layers(bert, hidden: torch.Tensor, mask: torch.Tensor, layers) -> torch.Tensor:
    ext = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=mask)
    for layer in layers:
        out = layer(hidden, ext)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.inference_mode()
def bottom_states(
    st_model, texts: Sequence[str], frozen_layers: int, *, prompt: str, batch_size: int = 64, pooled: bool = True, cpu_bf16: bool = False
):
    """Per text: hidden states after ``frozen_layers`` layers (float16, [tokens, hidden]) and the
    frozen student's mean-pooled output before any head or normalisation (float32, what a Dense
    head on top sees), computed in one forward pass; ``pooled=False``: the states alone (the top
    layers do not run) and ``None``. ``cpu_bf16``: on a CPU with native bf16, the forward runs
    under bf16 autocast (``encode.bf16_autocast``); the states are stored float16 either way."""
    bert = _bert(st_model)
    layers = encoder_layers(bert)
    states: list[np.ndarray | None] = [None] * len(texts)
    emb = np.empty((len(texts), bert.config.hidden_size) if pooled else (0, 0), dtype=np.float32)
    order = token_length_order(st_model, [prompt + t for t in texts])
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        f = st_model.preprocess([prompt + texts[i] for i in idx])
        ids, mask = f["input_ids"].to(bert.device), f["attention_mask"].to(bert.device)
        with bf16_autocast(bert.device, cpu_bf16) if cpu_bf16 and bert.device.type == "cpu" else nullcontext():
            h = bert.embeddings(input_ids=ids, token_type_ids=f.get("token_type_ids"))
            h = run_layers(bert, h, mask, layers[:frozen_layers])
            if pooled:
                emb[idx] = mean_pool(run_layers(bert, h, mask, layers[frozen_layers:]), mask).float().cpu().numpy()
        lengths = mask.sum(1).tolist()
        h16 = h.to(torch.float16).cpu().numpy()
        for j, i in enumerate(idx):
            states[i] = h16[j, : lengths[j]]
    return states, (emb if pooled else None)


def pad_states(states: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad variable-length [tokens, hidden] arrays into a batch and its attention mask."""
    n, hid = len(states), states[0].shape[1]
    L = max(s.shape[0] for s in states)
    x = torch.zeros(n, L, hid, dtype=torch.float32)
    m = torch.zeros(n, L, dtype=torch.long)
    for i, s in enumerate(states):
        x[i, : s.shape[0]] = torch.from_numpy(np.asarray(s, dtype=np.float32))
        m[i, : s.shape[0]] = 1
    return x, m


class TopStudent(nn.Module):
    """Top ``train_layers`` layers + mean pooling + optional Dense + normalize.

    The layer modules are shared with the SentenceTransformer they come from, so training this
    module trains that model in place.
    """

    def __init__(self, st_model, train_layers: int, dense: nn.Linear | None = None):
        super().__init__()
        bert = _bert(st_model)
        n = len(encoder_layers(bert))
        if not 1 <= train_layers <= n:
            raise ValueError(f"train_layers={train_layers} but the student has {n} layers")
        self.config = bert.config
        self._bert = [bert]  # not a submodule: only the top layers are parameters here
        self.layers = nn.ModuleList(list(encoder_layers(bert))[n - train_layers :])
        self.dense = dense

    def set_dropout(self, p: float) -> None:
        """Dropout of the trained layers (0 by default: MSE regression onto teacher vectors gains
        nothing from it, and noise before a least-squares head is amplified)."""
        for m in self.layers.modules():
            if isinstance(m, nn.Dropout):
                m.p = p

    @property
    def frozen_layers(self) -> int:
        return len(encoder_layers(self._bert[0])) - len(self.layers)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = run_layers(self._bert[0], hidden, mask, self.layers)
        e = mean_pool(x, mask)
        if self.dense is not None:
            e = self.dense(e)
        return torch.nn.functional.normalize(e, dim=-1)


class FullStudent(nn.Module):
    """The whole student (embeddings and every layer) + mean pooling + optional Dense + normalize,
    from token ids: the full fine-tune (``student.train_layers: all``). The encoder is the
    SentenceTransformer's own module, so training this trains that model in place."""

    def __init__(self, st_model, dense: nn.Linear | None = None):
        super().__init__()
        self.bert = _bert(st_model)
        self.config = self.bert.config
        self.dense = dense
        if getattr(self.bert, "pooler", None) is not None:
            # mean pooling never reads the [CLS] pooler: frozen, so DDP does not wait for its gradients
            self.bert.pooler.requires_grad_(False)

    def set_dropout(self, p: float) -> None:
        for m in self.bert.modules():
            if isinstance(m, nn.Dropout):
                m.p = p

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        e = mean_pool(x, mask)
        if self.dense is not None:
            e = self.dense(e)
        return torch.nn.functional.normalize(e, dim=-1)


def pad_ids(ids: Sequence[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad variable-length token id arrays into a batch and its attention mask."""
    L = max(len(x) for x in ids)
    out = torch.full((len(ids), L), pad_id, dtype=torch.long)
    m = torch.zeros(len(ids), L, dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, : len(x)] = torch.from_numpy(np.asarray(x, dtype=np.int64))
        m[i, : len(x)] = 1
    return out, m


# -- the linear map x -> y, from sums that stream ---------------------------------------------------


def gram_sums(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The sufficient statistics of least squares from ``x`` to ``y`` (float64): row count, sums
    and cross products. Sums of disjoint row sets add up, so a corpus of any size is reduced
    block by block (Ray Data ``map_batches``) and nothing holds all the rows."""
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return {"n": np.array(len(x64), np.float64), "sx": x64.sum(0), "sy": y64.sum(0), "sxx": x64.T @ x64, "sxy": x64.T @ y64}


def add_sums(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(b) if a is None else {k: a[k] + b[k] for k in a}


def lstsq_from_sums(s: dict[str, np.ndarray], ridge: float = 0.0) -> nn.Linear:
    """The least-squares affine map as an ``nn.Linear`` (the linear-map baseline), from ``gram_sums``.

    ``ridge`` > 0 adds an L2 penalty of ``ridge`` x the mean eigenvalue of the centred x'x (the
    bias is not penalised). Pure least squares on few rows is ill-conditioned (pooled vectors
    share a large common component), and a head that amplifies tiny changes of its input cannot
    be trained under it.
    """
    n, sx, sy, sxx, sxy = float(s["n"]), s["sx"], s["sy"], s["sxx"], s["sxy"]
    if ridge > 0:
        mx, my = sx / n, sy / n
        gram = sxx - n * np.outer(mx, mx)  # centred x'x
        gram[np.diag_indices_from(gram)] += ridge * np.trace(gram) / len(gram)
        wt = np.linalg.solve(gram, sxy - n * np.outer(mx, my))
        bias = my - mx @ wt
    else:  # normal equations of [x, 1]; lstsq gives the minimum-norm solution when they are singular
        d = len(sx)
        g = np.empty((d + 1, d + 1))
        g[:d, :d], g[:d, d], g[d, :d], g[d, d] = sxx, sx, sx, n
        w = np.linalg.lstsq(g, np.vstack([sxy, sy[None, :]]), rcond=None)[0]
        wt, bias = w[:d], w[d]
    lin = nn.Linear(sxy.shape[0], sxy.shape[1])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(wt.T.astype(np.float32)))
        lin.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    return lin


def linear_from_sums(s: dict[str, np.ndarray], ridge: float = 0.0) -> np.ndarray:
    """The least-squares linear map **without intercept**, ``W`` (d x k) minimising
    ``|xW - y|² + ridge·mean_eig(x'x)·|W|²``, from ``gram_sums``. For maps that must commute with
    a mean over tokens (a static student's token vectors: ``mean(E)W = mean(EW)``, which a bias
    scaled by token weights would break)."""
    sxx = np.array(s["sxx"], dtype=np.float64)
    if ridge > 0:
        sxx[np.diag_indices_from(sxx)] += ridge * np.trace(sxx) / len(sxx)
    return np.linalg.lstsq(sxx, s["sxy"], rcond=None)[0]


def lstsq_dense(x: np.ndarray, y: np.ndarray, ridge: float = 0.0) -> nn.Linear:
    """``lstsq_from_sums`` on rows held in memory."""
    return lstsq_from_sums(gram_sums(x, y), ridge)
