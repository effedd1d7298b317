"""Mean pooling inside a plain Hugging Face classifier: one more encoder layer whose [CLS] output
is ``LayerNorm(scale · mean(h) + h_cls)``.

Why: a sentence encoder trained with mean pooling (multilingual-e5, all-MiniLM) has no [CLS]
summary, while ``BertForSequenceClassification`` reads only the [CLS] token (pooler -> head), and
no BERT/XLM-R classification class of transformers mean-pools. A head that mean-pools would need
``trust_remote_code``; this layer is an ordinary ``BertLayer`` with fixed weights, so the export
stays a plain ``AutoModelForSequenceClassification`` that ``pipeline("text-classification")``
loads, and the classifier starts from the representation the encoder was trained to give.
Measured on the help-topics task (top 3 layers trained, 1 epoch): +3 to +4 points of accuracy
in every language over the [CLS] pooler (BENCHMARKS.md, Classifier transfer).

How (``BertLayer``, post-LayerNorm): query weights and bias 0, so every attention score is 0 and
softmax spreads each query uniformly over the unmasked tokens; value = identity, so the attention
output is the mean of the token states (what sentence-transformers' mean pooling computes, [CLS]
and [SEP] included); the attention's output projection scales it by ``scale`` and adds the
residual (``h_cls``) before its LayerNorm (weight 1, bias 0); the feed-forward block is zero, so
the second LayerNorm only re-normalises. With ``scale`` = 16 the mean dominates the residual.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

CONFIG_KEY = "mdistill_mean_pooling_layer"  # in config.json: the last encoder layer is this layer (kept frozen)


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, model.base_model_prefix)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(f"{type(base).__name__}: no encoder.layer list; mean pooling needs a BERT-style encoder")
    return layers


def has_mean_pooling_layer(model: nn.Module) -> bool:
    return bool(getattr(model.config, CONFIG_KEY, False))


@torch.no_grad()
def append_mean_pooling_layer(model: nn.Module, scale: float = 16.0) -> nn.Module:
    """Append the layer to ``model``'s encoder (in place; ``num_hidden_layers`` + 1, marked in the
    config). A model that already has it is returned unchanged."""
    if has_mean_pooling_layer(model):
        return model
    layers = encoder_layers(model)
    layer = copy.deepcopy(layers[-1])
    attn, out = layer.attention, layer.output
    hidden = model.config.hidden_size
    eye = torch.eye(hidden, dtype=attn.self.value.weight.dtype)
    for lin in (attn.self.query, attn.self.key):
        lin.weight.zero_()
        lin.bias.zero_()
    attn.self.value.weight.copy_(eye)
    attn.self.value.bias.zero_()
    attn.output.dense.weight.copy_(scale * eye)
    attn.output.dense.bias.zero_()
    for lin in (layer.intermediate.dense, out.dense):
        lin.weight.zero_()
        lin.bias.zero_()
    for norm in (attn.output.LayerNorm, out.LayerNorm):
        norm.weight.fill_(1.0)
        norm.bias.zero_()
    for m in layer.modules():  # attention-probability and output dropout would perturb the mean
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    layer.requires_grad_(False)
    layers.append(layer)
    model.config.num_hidden_layers = len(layers)
    setattr(model.config, CONFIG_KEY, True)
    return model
