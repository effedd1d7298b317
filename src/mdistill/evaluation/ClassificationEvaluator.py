"""Classification accuracy and macro-F1 of a classifier student, from logits.

For students distilled from a classifier teacher (Hinton et al. 2015, "Distilling the Knowledge in
a Neural Network", https://arxiv.org/abs/1503.02531): the prediction is the argmax of the logits;
accuracy against the labels, and macro-F1 = the unweighted mean over classes of per-class F1
(the classes present in the labels or the predictions, as scikit-learn's ``f1_score(average=
"macro")``; a class with no true and no predicted example does not count). The labels can be gold
labels, or the teacher's argmax (then accuracy is the student-teacher agreement).

Inputs: ``logits`` [n, classes] (or predicted class ids [n]) and ``labels`` [n] (class ids).

Example::

    >>> import numpy as np
    >>> ClassificationEvaluator.compute(np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), [0, 1, 1])["accuracy"]
    0.6666666666666666
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ClassificationEvaluator:
    def __init__(self, texts: Sequence[str], labels: Sequence[int], *, batch_size: int = 64, max_seq_length: int = 128, name: str = ""):
        self.texts, self.labels = list(texts), np.asarray(labels)
        self.batch_size, self.max_seq_length, self.name = batch_size, max_seq_length, name

    @staticmethod
    def compute(logits: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
        logits, labels = np.asarray(logits), np.asarray(labels)
        pred = logits.argmax(1) if logits.ndim == 2 else logits
        f1s = []
        for c in np.union1d(labels, pred):
            tp = np.sum((pred == c) & (labels == c))
            denom = np.sum(pred == c) + np.sum(labels == c)  # 2PR/(P+R) = 2 tp / (|predicted c| + |true c|)
            f1s.append(2 * tp / denom)
        return {"accuracy": float((pred == labels).mean()), "macro_f1": float(np.mean(f1s)), "n": len(labels)}

    def __call__(self, model, tokenizer) -> dict[str, float]:
        """``model``/``tokenizer``: a Hugging Face sequence classifier (``mdistill.encode.load_classifier``)."""
        from mdistill.encode import classify_batch

        logits = classify_batch(model, tokenizer, self.texts, batch_size=self.batch_size, max_seq_length=self.max_seq_length)
        return self.compute(logits, self.labels)
