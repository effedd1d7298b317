"""Training kernels of a classifier student, without Ray: the model, the logit-distillation losses
(soft, hard, online), one optimizer step, batches and prediction. A Ray Train worker loop strings
them together later; on a GPU machine they run as they are.

The three modes (``z_s``, ``z_t``: student and teacher logits; ``y``: gold labels, −100 = unknown):

- ``soft`` (Hinton et al. 2015, https://arxiv.org/abs/1503.02531): per row
  ``α · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α) · CE(z_s, y)`` if the row is labelled,
  ``T² · KL(...)`` if it is not (the weights of the terms a row has are renormalised to sum to 1:
  an unlabelled row has only the KL term, so it gets weight 1 whatever α is, even α = 0: the
  teacher is all such a row offers; drop unlabelled rows to train them out). The batch loss is
  the mean over rows, every row weighing the same. With every row labelled this is exactly
  ``DistillationLoss(α, T)``, with none ``KLDivLoss(T)``; a mixed batch is their row-count-weighted
  sum, which is what the code computes.
- ``hard``: ``CE(z_s, argmax z_t)``: the teacher's predictions as labels (pseudo-labelling).
  Gold labels, α and T are not used.
- ``supervised``: ``CE(z_s, y)`` over the labelled rows, no teacher: training a teacher, and the
  zero-shot and translate-train baselines.
- ``online`` (deep mutual learning, Zhang et al. 2018, https://arxiv.org/abs/1706.00384): the
  teacher trains too. Student loss = the ``soft`` rule of ``z_s`` against the teacher's *detached*
  ``z_t``; teacher loss = the same rule of ``z_t`` against the student's detached ``z_s``. The paper's
  loss is ``CE + KL`` at T = 1: ``alpha=0.5, temperature=1`` is that up to a factor 1/2. Both losses
  come from one forward pass of each model and both optimizers step together (the paper's
  Algorithm 1 updates the second network on the first one's *updated* predictions, which costs a
  third forward pass per step).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from mdistill.losses.DistillationLoss import DistillationLoss
from mdistill.losses.KLDivLoss import KLDivLoss
from mdistill.teacher.cache import embedding_matrix
from mdistill.training.step import StateFeatures, TextFeatures, warmup_linear

Mode = Literal["soft", "hard", "online", "supervised"]
MODES: tuple[str, ...] = ("soft", "hard", "online", "supervised")
IGNORE = -100  # label of a row without a gold label (torch's cross-entropy ignore_index)


class ClassifierStudent(nn.Module):
    """A Hugging Face ``AutoModelForSequenceClassification`` (encoder + dropout + linear head to
    ``num_labels``), trained as it is and exported as it is.

    Pooling: the architecture's own reads one token (BERT: [CLS] through its pooler, dense + tanh;
    XLM-R: ``<s>`` through its classification head), and no BERT/XLM-R classification class of
    transformers mean-pools; a mean-pooling head would need ``trust_remote_code``, and
    ``AutoModelForSequenceClassification.from_pretrained(exported)`` and
    ``pipeline("text-classification")`` must give the logits the student trained with. A
    mean-pooled sentence encoder (e5, all-MiniLM) has no trained [CLS] summary, so with
    ``pooling="mean"`` (the default for BERT encoders) ``models.mean_pooling_layer`` appends one
    fixed encoder layer that writes the mean of the tokens into [CLS]: still a plain BERT
    classifier, one module and one pooling for training, ``predict_logits`` and the export.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model  # a PreTrainedModel for sequence classification
        self.config = model.config
        self.frozen_layers = 0  # encoder layers below the trained ones (``freeze_below``)

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | Path, labels: Sequence[str], *, dropout: float = 0.1, pooling: Literal["mean", "cls"] = "cls"
    ) -> ClassifierStudent:
        """A classifier on the encoder at ``path_or_id`` (HF directory or id, or a
        sentence-transformers directory: it keeps the encoder at its root). The head is new;
        ``labels`` (in label-id order) go into the config as ``id2label`` / ``label2id``, so the
        export names its predictions. ``dropout``: before the linear head (``classifier_dropout``).
        ``pooling="mean"``: append the mean-pooling layer (kept if the model has it already)."""
        from transformers import AutoModelForSequenceClassification

        from mdistill.models.mean_pooling_layer import append_mean_pooling_layer

        labels = list(labels)
        if len(set(labels)) != len(labels) or len(labels) < 2:
            raise ValueError(f"labels must be at least two distinct names, got {labels}")
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path_or_id),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            problem_type="single_label_classification",  # softmax in the pipeline, not sigmoid
            classifier_dropout=dropout,
        )
        if pooling == "mean":
            append_mean_pooling_layer(model)
        return cls(model)

    @property
    def pooling_layers(self) -> int:
        """Fixed encoder layers on top of the model's own (the mean-pooling layer): never trained."""
        from mdistill.models.mean_pooling_layer import has_mean_pooling_layer

        return int(has_mean_pooling_layer(self.model))

    @property
    def labels(self) -> list[str]:
        return [self.config.id2label[i] for i in range(self.config.num_labels)]

    def set_dropout(self, p: float) -> None:
        """Dropout of the encoder and the head in training (the exported config keeps its own; the
        mean-pooling layer keeps none)."""
        from mdistill.models.mean_pooling_layer import encoder_layers

        layers = encoder_layers(self.model) if self.pooling_layers else []
        fixed = {id(m) for layer in list(layers)[len(layers) - self.pooling_layers :] for m in layer.modules()}
        for m in self.model.modules():
            if isinstance(m, nn.Dropout) and id(m) not in fixed:
                m.p = p

    def freeze_below(self, train_layers: int | str) -> int:
        """Train only the top ``train_layers`` layers of the model's own encoder, the pooler and the
        head (``"all"``: everything, embeddings included; the mean-pooling layer never trains);
        returns the parameters left trainable. The frozen embedding matrix is most of a
        multilingual model (96M of e5-small's 118M): AdamW over it costs more than the forward
        pass on a CPU."""
        for p in self.model.parameters():
            p.requires_grad = True
        base = getattr(self.model, self.model.base_model_prefix)
        layers = getattr(getattr(base, "encoder", None), "layer", None)
        own = None if layers is None else len(layers) - self.pooling_layers
        if layers is not None and self.pooling_layers:
            layers[own:].requires_grad_(False)
        if train_layers == "all":
            self.frozen_layers = 0
            return sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if layers is None:
            raise ValueError(f"train_layers {train_layers}: {type(base).__name__} has no encoder.layer list; use train_layers: all")
        if not 1 <= int(train_layers) <= own:
            raise ValueError(f"train_layers {train_layers}: the model has {own} layers")
        for p in base.embeddings.parameters():
            p.requires_grad = False
        self.frozen_layers = own - int(train_layers)
        for layer in layers[: self.frozen_layers]:
            for p in layer.parameters():
                p.requires_grad = False
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``features``: ``input_ids``, ``attention_mask`` (and optionally ``token_type_ids``) -> logits;
        or ``hidden`` (the cached states after the ``frozen_layers`` frozen layers, ``models.split.bottom_states``)
        and ``attention_mask``: the top layers and the head only, the same modules the full forward runs."""
        if "hidden" in features:
            return self.top_logits(features["hidden"], features["attention_mask"])
        return self.model(**features).logits

    def top_logits(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits from the hidden states after the frozen bottom. The frozen layers never change, so
        their output is computed once per text (the frozen pass) and each step runs only what trains."""
        from mdistill.models.split import run_layers

        base = getattr(self.model, self.model.base_model_prefix)
        x = run_layers(base, hidden, mask, base.encoder.layer[self.frozen_layers :])
        pooler = getattr(base, "pooler", None)
        if pooler is not None and hasattr(self.model, "dropout"):  # BERT: [CLS] -> pooler -> dropout -> classifier
            return self.model.classifier(self.model.dropout(pooler(x)))
        if pooler is None and type(self.model.classifier).__name__.endswith("ClassificationHead"):  # RoBERTa / XLM-R: head on <s>
            return self.model.classifier(x)
        raise ValueError(
            f"{type(self.model).__name__}: training from cached states needs a BERT or XLM-R classifier; use train_layers: all"
        )

    def save(self, path: str | Path, tokenizer=None) -> Path:
        """A plain Hugging Face directory: ``AutoModelForSequenceClassification`` and
        ``pipeline("text-classification")`` load it with no custom code. Pass the tokenizer so the
        directory is complete."""
        path = Path(path)
        self.model.save_pretrained(path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        return path


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / DeepSpeed engines wrap the module


def logits_of(model: nn.Module, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a ``ClassifierStudent`` or of a plain HF sequence classifier (a teacher from
    ``encode.load_classifier``), either possibly DDP-wrapped."""
    if isinstance(_unwrap(model), ClassifierStudent):
        return model(features)
    return model(**features).logits


def _hf(model: nn.Module) -> nn.Module:
    inner = _unwrap(model)
    return inner.model if isinstance(inner, ClassifierStudent) else inner


# -- losses -------------------------------------------------------------------------------------------


class ClassifyLoss(NamedTuple):
    student: torch.Tensor
    teacher: torch.Tensor | None = None  # online mode only: the teacher's own loss


def soft_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """The ``soft`` rule (module docstring): labelled rows ``DistillationLoss``, unlabelled rows
    ``KLDivLoss``, weighted by their share of the batch (both losses average over their rows)."""
    known = labels != IGNORE
    n, n_known = len(labels), int(known.sum())  # a host sync: the split below is data-dependent
    if n == 0:
        raise ValueError("empty batch")
    loss = student_logits.new_zeros(())
    if n_known:
        blend = DistillationLoss(alpha=alpha, temperature=temperature)
        loss = loss + blend(student_logits[known], teacher_logits[known], labels[known]) * (n_known / n)
    if n_known < n:
        loss = loss + KLDivLoss(temperature)(student_logits[~known], teacher_logits[~known]) * ((n - n_known) / n)
    return loss


def classification_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, mode: Mode, temperature: float, alpha: float
) -> ClassifyLoss:
    """The student's loss (and in ``online`` mode the teacher's), as the module docstring defines them.

    ``teacher_logits`` are detached here wherever they are a target; in ``online`` mode pass them
    with their graph, so the teacher loss can train the teacher."""
    if mode == "soft":
        return ClassifyLoss(soft_loss(student_logits, teacher_logits.detach(), labels, temperature, alpha))
    if mode == "hard":
        return ClassifyLoss(nn.functional.cross_entropy(student_logits, teacher_logits.detach().argmax(-1)))
    if mode == "supervised":
        if not bool((labels != IGNORE).any()):
            raise ValueError("supervised mode: a batch without any gold label")
        return ClassifyLoss(nn.functional.cross_entropy(student_logits, labels, ignore_index=IGNORE))
    if mode == "online":
        return ClassifyLoss(
            soft_loss(student_logits, teacher_logits.detach(), labels, temperature, alpha),
            soft_loss(teacher_logits, student_logits.detach(), labels, temperature, alpha),
        )
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


# -- batches ------------------------------------------------------------------------------------------


@dataclass
class ClassifyBatch:
    """One micro-batch. ``inputs``: token ids [batch, tokens], or the student's cached hidden
    states after its frozen layers [batch, tokens, hidden] (float). ``labels``: class ids, −100
    where unknown. ``teacher_logits``: cached teacher logits (soft / hard without a live teacher).
    ``teacher_input_ids`` / ``teacher_attention_mask``: the teacher's own input when it runs live
    with another tokenizer or another text (the English source of a translation); default: the
    student's input. ``teacher_index``: row -> its teacher input, when the batch's rows share
    English sources (each distinct source runs once); None: one teacher input per row."""

    inputs: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    teacher_input_ids: torch.Tensor | None = None
    teacher_attention_mask: torch.Tensor | None = None
    teacher_index: torch.Tensor | None = None

    def features(self) -> dict[str, torch.Tensor]:
        key = "hidden" if self.inputs.is_floating_point() else "input_ids"
        return {key: self.inputs, "attention_mask": self.attention_mask}

    def teacher_features(self) -> dict[str, torch.Tensor]:
        if self.teacher_input_ids is None:
            return self.features()
        return {"input_ids": self.teacher_input_ids, "attention_mask": self.teacher_attention_mask}

    def to(self, device) -> ClassifyBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return ClassifyBatch(**{k: None if v is None else v.to(device, non_blocking=True) for k, v in moved.items()})


def make_batch(
    texts: Sequence[str],
    tokenizer,
    *,
    labels: Sequence[int | None] | None = None,
    teacher_logits: np.ndarray | torch.Tensor | None = None,
    max_seq_length: int = 128,
    prompt: str = "",
) -> ClassifyBatch:
    """A batch from texts, tokenised as ``TextFeatures`` does (and so as ``predict_logits`` does).
    ``labels``: None entries (or no labels at all) become −100."""
    feats = TextFeatures(tokenizer, prompt, max_seq_length)
    ids, mask = feats.pad(feats(pa.table({"text": list(texts)})))
    y = torch.tensor([IGNORE if v is None else int(v) for v in (labels if labels is not None else [None] * len(texts))], dtype=torch.long)
    t = None if teacher_logits is None else torch.as_tensor(np.asarray(teacher_logits, dtype=np.float32))
    return ClassifyBatch(ids, mask, y, t)


def classify_batches(
    chunks: Iterable[pa.Table],
    batch_size: int,
    rng: random.Random,
    features: TextFeatures | StateFeatures,
    *,
    label_column: str = "label_id",
    logits_column: str | None = "logits",
    teacher_features: TextFeatures | None = None,
    teacher_text_column: str = "en",
) -> Iterator[ClassifyBatch]:
    """``step.bucketed_batches`` for classification: within each chunk, rows sorted by token count,
    cut into batches, batch order shuffled. ``features``: ``TextFeatures`` (column ``text``) or
    ``StateFeatures`` (the cached states: ``hidden``, ``length``, ``dim``). ``label_column`` (nullable: null ->
    −100; absent: all −100); ``logits_column`` (teacher logits, optional); with
    ``teacher_features``, the live teacher's input from ``teacher_text_column``: rows are then
    sorted by their teacher text, so a batch holds an English source with its translations and the
    teacher runs once per distinct source (``teacher_index``): online distillation pays one
    teacher forward per English paragraph, not one per language."""
    for chunk in chunks:
        items = features(chunk)
        n = len(items)
        if label_column in chunk.column_names:
            y = torch.tensor([IGNORE if v is None else v for v in chunk.column(label_column).to_pylist()], dtype=torch.long)
        else:
            y = torch.full((n,), IGNORE, dtype=torch.long)
        t = torch.tensor(embedding_matrix(chunk.column(logits_column))) if logits_column and logits_column in chunk.column_names else None
        if teacher_features is None:
            order = sorted(range(n), key=lambda i: (items[i].shape[0], rng.random()))
        else:
            sources = chunk.column(teacher_text_column).to_pylist()
            tie = {e: rng.random() for e in sources}
            order = sorted(range(n), key=lambda i: (len(sources[i]), tie[sources[i]], sources[i], items[i].shape[0]))
        batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
        rng.shuffle(batches)
        for b in batches:
            ids, mask = features.pad([items[i] for i in b])
            batch = ClassifyBatch(ids, mask, y[b], None if t is None else t[b])
            if teacher_features is not None:
                distinct = list(dict.fromkeys(sources[i] for i in b))
                t_items = teacher_features(pa.table({"text": distinct}))
                batch.teacher_input_ids, batch.teacher_attention_mask = teacher_features.pad(t_items)
                at = {e: k for k, e in enumerate(distinct)}
                batch.teacher_index = torch.tensor([at[sources[i]] for i in b], dtype=torch.long)
            yield batch


# -- optimizer and step -------------------------------------------------------------------------------


def make_classifier_optimizer(
    model: nn.Module, *, lr: float, head_lr: float | None, weight_decay: float, total_steps: int, warmup_ratio: float
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """``step.make_optimizer`` for a classifier (``ClassifierStudent`` or a plain HF classifier, the
    online teacher): AdamW over the encoder (``lr``) and the new head (``head_lr``; everything
    outside the HF base model: BERT's classifier, XLM-R's classification head), warm-up + linear decay."""
    hf = _hf(model)
    prefix = hf.base_model_prefix + "."
    named = list(hf.named_parameters())
    body = [p for n, p in named if n.startswith(prefix) and p.requires_grad]  # frozen layers: not in the optimizer
    head = [p for n, p in named if not n.startswith(prefix) and p.requires_grad]
    groups = [{"params": body, "lr": lr}, {"params": head, "lr": head_lr or lr}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(total_steps, warmup_ratio))


def _step(optimizer, scheduler, max_grad_norm: float) -> None:
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def classify_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    batch: ClassifyBatch,
    mode: Mode,
    temperature: float,
    alpha: float,
    teacher: nn.Module | None = None,
    teacher_optimizer: torch.optim.Optimizer | None = None,
    *,
    teacher_scheduler=None,
    max_grad_norm: float = 1.0,
    accum: int = 1,
    boundary: bool = True,
) -> dict[str, float]:
    """One micro-batch of plain PyTorch / DDP training, as ``step.train_step``: loss / ``accum``
    backward, and on ``boundary`` clip to ``max_grad_norm``, step, schedule, zero.

    Teacher logits: ``batch.teacher_logits`` if the batch has them (soft / hard); else ``teacher``
    runs live on ``batch.teacher_features()`` (no gradient; put it in eval mode). ``online``: the
    teacher and ``teacher_optimizer`` are required, the teacher trains, and ``teacher_loss`` is
    returned too. Returns ``{"loss": ..., ["teacher_loss": ...]}`` (before the update)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    online = mode == "online"
    if online and (teacher is None or teacher_optimizer is None):
        raise ValueError("online mode trains the teacher too: pass teacher and teacher_optimizer")
    logits = logits_of(model, batch.features()).float()  # the loss in float32, as train_step

    def live_teacher() -> torch.Tensor:
        z = logits_of(teacher, batch.teacher_features()).float()
        return z if batch.teacher_index is None else z[batch.teacher_index]  # each row gets its source's logits

    if online:
        t_logits = live_teacher()
    elif mode == "supervised":
        t_logits = logits.detach()  # unused: the gold labels are the target
    elif batch.teacher_logits is not None:
        t_logits = batch.teacher_logits.float()
    elif teacher is not None:
        with torch.no_grad():
            t_logits = live_teacher()
    else:
        raise ValueError(f"mode {mode!r} needs batch.teacher_logits or a teacher")
    losses = classification_loss(logits, t_logits, batch.labels, mode, temperature, alpha)
    # each loss detaches the other model's logits: one backward of the sum gives each model its own gradient
    total = losses.student if losses.teacher is None else losses.student + losses.teacher
    (total / accum).backward()
    if boundary:
        _step(optimizer, scheduler, max_grad_norm)
        if online:
            _step(teacher_optimizer, teacher_scheduler, max_grad_norm)
    out = {"loss": float(losses.student.detach())}
    if losses.teacher is not None:
        out["teacher_loss"] = float(losses.teacher.detach())
    return out


# -- evaluation ---------------------------------------------------------------------------------------


@torch.inference_mode()
def predict_state_logits(model: nn.Module, chunks: Iterable[pa.Table], batch_size: int = 64) -> np.ndarray:
    """Logits (float32, row order) of a ``ClassifierStudent`` trained from cached states, on rows
    with the states columns (``hidden``, ``length``, ``dim``), in eval mode (restored after)."""
    inner = _unwrap(model)
    was_training = inner.training
    inner.eval()
    features, out = StateFeatures(), []
    device = next(inner.parameters()).device
    try:
        with torch.inference_mode():
            for chunk in chunks:
                items = features(chunk)
                # length-sorted batches (little padding), written back in row order
                order = sorted(range(len(items)), key=lambda i: items[i].shape[0])
                logits = np.empty((len(items), inner.config.num_labels), np.float32)
                for start in range(0, len(items), batch_size):
                    idx = order[start : start + batch_size]
                    hidden, mask = features.pad([items[i] for i in idx])
                    logits[idx] = inner.top_logits(hidden.to(device), mask.to(device)).float().cpu().numpy()
                out.append(logits)
    finally:
        inner.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, inner.config.num_labels), np.float32)


def predict_logits(
    model: nn.Module, texts: Sequence[str], tokenizer, batch_size: int = 64, max_seq_length: int = 128, *, prompt: str = ""
) -> np.ndarray:
    """Logits (float32, input order) of a ``ClassifierStudent`` or HF classifier in eval mode, via
    ``encode.classify_batch`` (the teacher pass's kernel: same tokenisation, bf16 autocast on GPU);
    the model's train/eval mode is restored. Feed them to ``ClassificationEvaluator.compute``."""
    from mdistill.encode import classify_batch

    hf = _hf(model)
    was_training = hf.training
    hf.eval()
    try:
        return classify_batch(hf, tokenizer, texts, batch_size=batch_size, max_seq_length=max_seq_length, prompt=prompt)
    finally:
        hf.train(was_training)
