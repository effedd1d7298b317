"""The mean-pooling layer (``models/mean_pooling_layer.py``): on a tiny random-init BERT, the
appended layer's [CLS] output is LayerNorm(scale · mean of the unmasked token states + h_cls),
whatever the padding; it never trains, and the classifier that has it saves and loads as a plain
``AutoModelForSequenceClassification``."""

from __future__ import annotations

import torch

from mdistill.models.mean_pooling_layer import CONFIG_KEY, append_mean_pooling_layer
from mdistill.tasks import help_topics
from mdistill.training.classify_step import ClassifierStudent, make_batch

from conftest import fixture_pairs, make_tiny_model


def test_cls_output_is_the_normalised_mean_of_the_tokens_and_the_export_loads(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pairs = fixture_pairs()
    path = make_tiny_model(tmp_path / "st", list(pairs.en) + list(pairs.text), layers=2, hidden=32)
    tok = AutoTokenizer.from_pretrained(str(path))
    plain = ClassifierStudent.from_pretrained(path, help_topics.labels()).eval()
    torch.manual_seed(0)
    model = ClassifierStudent.from_pretrained(path, help_topics.labels(), pooling="mean").eval()
    assert getattr(model.config, CONFIG_KEY) and model.config.num_hidden_layers == 3 and model.pooling_layers == 1
    texts = ["Wählen Sie Format - Zellen.", *pairs.text[:5]]  # lengths differ: padded batch
    ids, mask = make_batch(texts, tok, max_seq_length=64).features().values()
    with torch.no_grad():
        h = plain.model.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # the encoder's own output
        cls = model.model.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    m = mask.unsqueeze(-1).float()
    mean = (h * m).sum(1) / m.sum(1)
    want = torch.nn.functional.layer_norm(16.0 * mean + h[:, 0], (h.shape[-1],), eps=model.config.layer_norm_eps)
    assert (cls - want).abs().max().item() < 1e-4

    # never trained, whatever train_layers says, and no dropout inside it
    model.train()
    model.set_dropout(0.5)
    pool = model.model.bert.encoder.layer[-1]
    assert model.freeze_below(1) > 0 and model.frozen_layers == 1
    assert not any(p.requires_grad for p in pool.parameters())
    assert all(p.requires_grad for p in model.model.bert.encoder.layer[1].parameters())
    assert all(d.p == 0.0 for d in pool.modules() if isinstance(d, torch.nn.Dropout))
    model.freeze_below("all")
    assert not any(p.requires_grad for p in pool.parameters())
    assert append_mean_pooling_layer(model.model) is model.model and model.config.num_hidden_layers == 3  # once

    model.eval()
    out = model.save(tmp_path / "clf", tok)
    loaded = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert (loaded(input_ids=ids, attention_mask=mask).logits - model({"input_ids": ids, "attention_mask": mask})).abs().max() < 1e-5
    # a classifier that has the layer keeps it, once, when a run starts from it again
    again = ClassifierStudent.from_pretrained(out, help_topics.labels(), pooling="mean")
    assert again.config.num_hidden_layers == 3
