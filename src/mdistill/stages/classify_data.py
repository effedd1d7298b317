"""Task stage of the classify recipe: from a built corpus, the labelled rows a classifier run
trains and is evaluated on (``mdistill.tasks.help_topics``: LibreOffice help paragraphs labelled
by their help module, split by help file).

Streaming: the corpus' pairs pass through Ray Data once to collect each English paragraph's
(label, file split) — one short row per distinct English text, the only corpus-sized table the
driver holds (``help_topics.drop_conflicts`` needs every occurrence of a text) — and once more to
take the translations of the sampled paragraphs. The samples (``classify.max_train_english``,
``max_eval_english``) are what the driver keeps, like the dev sample of the embedding recipe.

Rows: ``text``, ``lang`` (``en`` for the English paragraph itself), ``en`` (its English source),
``label_id``, ``labelled`` (its English paragraph is among the first ``classify.labelled_english``
by hash: a gold label the user has; the others are unlabelled parallel text, their label kept for
the translate-train upper bound and the evaluation); the evaluation table adds ``split`` (dev,
test). A translation always carries its English paragraph's label: the same paragraph of the same
help file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.expressions import col

from mdistill.stages.cache_pass import add_keys
from mdistill.stages.corpus import Corpus
from mdistill.tasks import help_topics

TASK_VERSION = 2  # bump when what a task selection holds changes
ROW_SCHEMA = pa.schema(
    [("text", pa.string()), ("lang", pa.string()), ("en", pa.string()), ("label_id", pa.int64()), ("labelled", pa.bool_())]
)


@dataclass(frozen=True)
class TaskData:
    labels: list[str]
    train: pa.Table  # text, lang, en, label_id, labelled: the English training paragraphs and their translations
    eval: pa.Table  # + split: dev and test paragraphs (English and translations)
    balance: dict[str, dict[str, int]]  # English paragraphs per split (train, dev, test, all; labelled: of train) per label, after the caps
    available: dict[str, dict[str, int]]  # the same before the caps: every usable paragraph
    dropped: dict[str, int]  # English paragraphs removed: ambiguous (two labels), cross_split (also in an earlier split)
    fingerprint: str

    def english_train(self) -> pa.Table:
        return self.train.filter(pc.equal(self.train.column("lang"), "en"))

    def labelled_english(self) -> pa.Table:
        """The English paragraphs with a gold label the user has: what an English classifier trains on."""
        t = self.english_train()
        return t.filter(t.column("labelled"))

    def rows_per_lang(self, table: pa.Table) -> dict[str, int]:
        vc = pc.value_counts(table.column("lang"))
        return dict(sorted((v.as_py(), c.as_py()) for v, c in zip(vc.field("values"), vc.field("counts"))))


def _task_rows(batch: pa.Table) -> pa.Table:
    """``en, lang, text, label_id, task_split`` of a batch of corpus rows (unlabelled rows dropped)."""
    t = help_topics.add_task_columns(batch.select(["en", "lang", "text", "origin"]))
    return t.select(["en", "lang", "text", "label", "label_id", "task_split"])


def _english_level(batch: pa.Table) -> pa.Table:
    """Distinct (en, label, task_split) of a batch: what conflict detection needs."""
    t = _task_rows(batch).select(["en", "label", "task_split"])
    return t.group_by(["en", "label", "task_split"], use_threads=False).aggregate([])


def _corpus_rows(corpus: Corpus, langs: tuple[str, ...], quarantined_duplicates: bool) -> ray.data.Dataset:
    """LibreOffice pairs of the run's languages; with ``quarantined_duplicates`` the copies the
    corpus' dedup moved to quarantine (the other files a text occurs in)."""
    if quarantined_duplicates:
        path, wanted = corpus.dir / "quarantine", (col("reason") == "duplicate")
    else:
        path, wanted = corpus.pairs, (col("variant") == 0)
    wanted = wanted & (col("source") == "libreoffice") & col("lang").is_in(list(langs))
    return ray.data.read_parquet(str(path)).filter(expr=wanted).select_columns(["en", "lang", "text", "origin"])


def _collect(ds: ray.data.Dataset) -> pa.Table:
    schema = pa.schema([("en", pa.string()), ("label", pa.string()), ("task_split", pa.string())])
    blocks = [
        b.cast(schema) for b in ds.map_batches(_english_level, batch_format="pyarrow").iter_batches(batch_size=None, batch_format="pyarrow")
    ]
    t = pa.concat_tables([schema.empty_table(), *blocks])
    return t.group_by(["en", "label", "task_split"], use_threads=False).aggregate([])


def _sample(english: pa.Table, split: str, n: int | None) -> pa.Table:
    """The first ``n`` English paragraphs of a split in hash order (no preference for any prefix)."""
    t = english.filter(pc.equal(english.column("task_split"), split))
    t = add_keys(t.rename_columns(["text", *t.column_names[1:]]), columns=("text",)).sort_by("key")
    return (t if n is None else t.slice(0, n)).rename_columns(["en", *t.column_names[1:]])


def _translations(batch: pa.Table, chosen: dict[str, str]) -> pa.Table:
    """Pairs of a batch whose English was sampled, from a file of the split it was sampled for."""
    t = _task_rows(batch)
    keep = [chosen.get(e) == s for e, s in zip(t.column("en").to_pylist(), t.column("task_split").to_pylist())]
    t = t.filter(pa.array(keep, pa.bool_()))
    return pa.table(
        {
            "text": t.column("text"),
            "lang": t.column("lang"),
            "en": t.column("en"),
            "label_id": t.column("label_id"),
            "split": t.column("task_split"),
        }
    )


def select_task(
    corpus: Corpus, langs: list[str], max_train_english: int | None, max_eval_english: int | None, labelled_english: int | None = None
) -> TaskData:
    langs_t = tuple(langs)
    kept = _collect(_corpus_rows(corpus, langs_t, quarantined_duplicates=False))
    dups = _collect(_corpus_rows(corpus, langs_t, quarantined_duplicates=True))
    # English level: one row per (text, label, split); conflicts over every file the text is in
    english, dropped = help_topics.drop_conflicts(kept, also=dups)
    english = english.group_by(["en", "label", "task_split"], use_threads=False).aggregate([])
    if not english.num_rows:
        raise RuntimeError(f"no labelled LibreOffice help paragraphs in {corpus.dir}: the classify task needs corpus part libreoffice")
    samples = {
        "train": _sample(english, "train", max_train_english),
        "dev": _sample(english, "dev", max_eval_english),
        "test": _sample(english, "test", max_eval_english),
    }
    chosen = {e: s for s, t in samples.items() for e in t.column("en").to_pylist()}
    labelled = set(samples["train"].column("en").to_pylist()[:labelled_english])  # the first by hash, as every sample
    pairs = pa.concat_tables(
        [pa.schema([*(f for f in ROW_SCHEMA if f.name != "labelled"), ("split", pa.string())]).empty_table()]
        + [
            b
            for b in _corpus_rows(corpus, langs_t, quarantined_duplicates=False)
            .map_batches(partial(_translations, chosen=chosen), batch_format="pyarrow")
            .iter_batches(batch_size=None, batch_format="pyarrow")
        ]
    )
    ids = pa.array([help_topics.label_id(x) for x in pa.concat_tables(samples.values()).column("label").to_pylist()], pa.int64())
    en_rows = pa.concat_tables(samples.values())
    en_rows = pa.table(
        {
            "text": en_rows.column("en"),
            "lang": pa.array(["en"] * en_rows.num_rows, pa.string()),
            "en": en_rows.column("en"),
            "label_id": ids,
            "split": en_rows.column("task_split"),
        }
    )
    rows = pa.concat_tables([en_rows, pairs.cast(en_rows.schema)]).sort_by(
        [("split", "ascending"), ("lang", "ascending"), ("en", "ascending"), ("text", "ascending")]
    )
    is_train = pc.equal(rows.column("split"), "train")
    rows = rows.append_column("labelled", pc.and_(is_train, pa.array([e in labelled for e in rows.column("en").to_pylist()], pa.bool_())))
    train = rows.filter(is_train).select(ROW_SCHEMA.names)
    evaluation = rows.filter(pc.invert(is_train))

    def balance(t: pa.Table) -> dict[str, dict[str, int]]:
        return help_topics.class_balance(t)

    used = balance(pa.concat_tables(samples.values()))
    used["labelled"] = balance(samples["train"].slice(0, len(labelled)))["train"]  # of the training sample: the gold labels

    key = json.dumps(
        {
            "corpus": corpus.fingerprint,
            "langs": list(langs),
            "train": max_train_english,
            "eval": max_eval_english,
            "labelled": labelled_english,
            "v": TASK_VERSION,
        },  # fmt: skip
        sort_keys=True,
    )
    return TaskData(
        labels=help_topics.labels(),
        train=train,
        eval=evaluation,
        balance=used,
        available=balance(english),
        dropped=dropped,
        fingerprint=hashlib.blake2b(key.encode(), digest_size=16).hexdigest(),
    )
