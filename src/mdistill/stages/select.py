"""Selection stage: from a built corpus, the rows a run learns from and is evaluated on.

- train pairs: ``split == train``, one translation per (English, language) (``variant == 0``),
  the run's languages; kept as lazy Ray Datasets, so no process holds them all;
- the dev sample: ``split == dev``, the first ``eval.max_dev_per_lang`` English sources (sorted)
  per language, a table the size of that cap (the only rows the driver holds): in-domain, the
  same files as training;
- the held-out sample: ``split == heldout`` (whole sources never trained on,
  ``corpus.heldout_sources``), ``eval.max_heldout_per_lang`` English sources per language in hash
  order: the out-of-domain numbers, the same sentences for every run over the same sources;
- the student's rows (Reimers & Gurevych 2020): each English source once and each translation
  once, the target of both being the teacher's vector of the English source.
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

from mdistill.report.schema import DataCounts
from mdistill.stages.cache_pass import add_keys
from mdistill.stages.corpus import Corpus

SELECTION_VERSION = 2  # bump when what a selection holds changes
ROW_COLUMNS = ["text", "lang", "en", "split"]


def _rows(batch: pa.Table, *, split: str, english: bool) -> pa.Table:
    """Student rows of a batch: English sources (``english``: text = en, lang = "en") or translations."""
    en = batch.column("en").cast(pa.string())
    text = en if english else batch.column("text").cast(pa.string())
    lang = pa.array(["en"] * batch.num_rows, pa.string()) if english else batch.column("lang").cast(pa.string())
    return pa.table({"text": text, "lang": lang, "en": en, "split": pa.array([split] * batch.num_rows, pa.string())})


def first_sources(t: pa.Table, n: int | None, by_hash: bool = False) -> pa.Table:
    """Per language, the rows of the first ``n`` English sources (sorted by text, or by
    ``text_key(en)`` with ``by_hash``: a sample that does not favour any prefix); all rows when
    ``n`` is None."""
    if by_hash and "en_key" not in t.column_names:
        t = add_keys(t, columns=("en",))
    order = [("lang", "ascending"), *([("en_key", "ascending")] if by_hash else []), ("en", "ascending"), ("text", "ascending")]
    t = t.sort_by(order)
    if n is None or not t.num_rows:
        return t
    lang = t.column("lang").to_pylist()
    en = t.column("en").to_pylist()
    keep, seen, current = [], 0, None
    for i, (lg, e) in enumerate(zip(lang, en)):  # sorted: count distinct English per language
        if lg != current:
            current, seen, last = lg, 0, None
        if e != last:
            seen, last = seen + 1, e
        if seen <= n:
            keep.append(i)
    return t.take(pa.array(keep, pa.int64()))


def _sample(corpus: Corpus, langs: tuple[str, ...], split: str, n: int | None, by_hash: bool) -> pa.Table:
    """A streaming top-n: each block keeps its first n sources per language, the driver merges
    blocks as they come (it never holds more than ~2n rows per language)."""
    schema = pa.schema([("en", pa.string()), ("lang", pa.string()), ("text", pa.string())])
    out = schema.empty_table()
    firsts = read_pairs(corpus, langs, split).map_batches(
        partial(first_sources, n=n, by_hash=by_hash), batch_format="pyarrow", batch_size=None
    )
    for block in firsts.iter_batches(batch_size=None, batch_format="pyarrow"):
        out = first_sources(pa.concat_tables([out, block.select(["en", "lang", "text"]).cast(schema)]), n, by_hash)
    return out.select(["en", "lang", "text"])


def _per_lang(t: pa.Table) -> dict[str, int]:
    vc = pc.value_counts(t.column("lang"))
    return dict(sorted((v.as_py(), c.as_py()) for v, c in zip(vc.field("values"), vc.field("counts"))))


def _count_langs(batch: pa.Table) -> pa.Table:
    vc = pc.value_counts(batch.column("lang"))
    return pa.table({"lang": vc.field("values").cast(pa.string()), "n": vc.field("counts")})


def read_pairs(corpus: Corpus, langs: tuple[str, ...], split: str) -> ray.data.Dataset:
    """``en, lang, text`` of one split: one translation per (English, language), the run's languages."""
    wanted = (col("split") == split) & (col("variant") == 0) & col("lang").is_in(list(langs))
    return ray.data.read_parquet(str(corpus.pairs)).filter(expr=wanted).select_columns(["en", "lang", "text"])


def read_english(corpus: Corpus, split: str) -> ray.data.Dataset:
    """The distinct English sources of a split (the corpus lists each once)."""
    return ray.data.read_parquet(str(corpus.english)).filter(expr=col("split") == split).select_columns(["en"])


@dataclass(frozen=True)
class Selection:
    corpus: Corpus
    langs: tuple[str, ...]
    dev: pa.Table  # en, lang, text: the dev sample (in-domain), sorted by (lang, en)
    heldout: pa.Table  # en, lang, text: the out-of-domain sample (``corpus.heldout_sources``); may be empty
    counts: DataCounts
    fingerprint: str

    def train_pairs(self) -> ray.data.Dataset:
        return read_pairs(self.corpus, self.langs, "train")

    def train_english(self) -> ray.data.Dataset:
        return read_english(self.corpus, "train")

    def eval_rows(self) -> pa.Table:
        """The student rows of the dev and held-out samples: each English source once per sample."""
        tables = []
        for split, sample in (("dev", self.dev), ("heldout", self.heldout)):
            english = pa.table({"en": pc.unique(sample.column("en"))})
            tables += [_rows(english, split=split, english=True), _rows(sample, split=split, english=False)]
        return pa.concat_tables(tables)

    def rows(self) -> ray.data.Dataset:
        """Every sentence the student learns from or is evaluated on, with ``split`` (train, dev,
        heldout) and ``key`` / ``en_key`` (hashes of text / en)."""
        train_en = self.train_english().map_batches(partial(_rows, split="train", english=True), batch_format="pyarrow")
        train_xx = self.train_pairs().map_batches(partial(_rows, split="train", english=False), batch_format="pyarrow")
        rows = train_en.union(train_xx, ray.data.from_arrow(self.eval_rows()))
        return rows.map_batches(partial(add_keys, columns=("text", "en")), batch_format="pyarrow")

    def sentences(self) -> ray.data.Dataset:
        """Every row's text, flagged ``teacher`` where the teacher must embed it: the English
        sources (the targets) and the dev and held-out translations (the teacher-alone baseline). Deduplicated
        (``cache_pass.Distinct``), it is what the teacher pass and every frozen pass embed."""

        def flag(b: pa.Table) -> pa.Table:
            teacher = pc.or_(pc.equal(b.column("lang"), "en"), pc.not_equal(b.column("split"), "train"))
            return pa.table({"text": b.column("text"), "teacher": teacher})

        return self.rows().map_batches(flag, batch_format="pyarrow")

    def student_texts(self) -> ray.data.Dataset:
        return self.rows().select_columns(["text"])


def select_data(corpus: Corpus, langs: list[str], max_dev_per_lang: int | None, max_heldout_per_lang: int | None = 500) -> Selection:
    langs = tuple(langs)
    dev = _sample(corpus, langs, "dev", max_dev_per_lang, by_hash=False)
    schema = pa.schema([("en", pa.string()), ("lang", pa.string()), ("text", pa.string())])
    has_heldout = corpus.manifest.get("kept_by_split", {}).get("heldout", 0) > 0  # no read when no source is held out
    heldout = _sample(corpus, langs, "heldout", max_heldout_per_lang, by_hash=True) if has_heldout else schema.empty_table()

    train_pairs: dict[str, int] = {}
    for block in (
        read_pairs(corpus, langs, "train")
        .map_batches(_count_langs, batch_format="pyarrow")
        .iter_batches(batch_size=None, batch_format="pyarrow")
    ):
        for lg, n in zip(block.column("lang").to_pylist(), block.column("n").to_pylist()):
            train_pairs[lg] = train_pairs.get(lg, 0) + n
    train_english = read_english(corpus, "train").count()
    if not train_pairs or not dev.num_rows:
        raise RuntimeError(
            f"no {'training' if not train_pairs else 'dev'} pairs after cleaning and splitting; see {corpus.dir / 'manifest.json'}"
        )
    sample_english = sum(len(pc.unique(t.column("en"))) for t in (dev, heldout))
    counts = DataCounts(
        train_pairs=dict(sorted(train_pairs.items())),
        train_english=train_english,
        dev_pairs=_per_lang(dev),
        heldout_pairs=_per_lang(heldout),
        student_rows=train_english + sum(train_pairs.values()) + sample_english + dev.num_rows + heldout.num_rows,
    )
    key = json.dumps(
        {
            "corpus": corpus.fingerprint,
            "langs": list(langs),
            "max_dev": max_dev_per_lang,
            "max_heldout": max_heldout_per_lang,
            "v": SELECTION_VERSION,
        },
        sort_keys=True,
    )
    return Selection(corpus, langs, dev, heldout, counts, hashlib.blake2b(key.encode(), digest_size=16).hexdigest())
