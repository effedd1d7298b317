"""Help-topic classification: a LibreOffice help paragraph labelled by the help module it is in.

The path of a help file names its module (``text/scalc/01/04060101.html`` is Calc); the corpus
keeps that path per row in ``origin`` (``libreoffice-help/<path>``, set by the corpus planner,
``stages.corpus.debian_units``), for every language, so the English paragraph and its
translations carry the same label: train on English, test on German or French.

Label set (decided on libreoffice-help 7.4.7, Debian 12, en-US: 2,561 files, 56,666 paragraphs;
34,217 pass the corpus' default filters: 3-64 English words, 2-1000 characters, a letter):

==========  ================  ==========  =========================================
label       modules           paragraphs  share of labelled: all / corpus filters
==========  ================  ==========  =========================================
calc        scalc                 14,464  35.6% / 31.6%
basic       sbasic                11,022  27.2% / 25.7%
writer      swriter                7,613  18.8% / 21.7%
impress     simpress + sdraw       3,715   9.2% / 10.6%
math        smath                  1,624   4.0% /  4.2%
chart       schart                 1,074   2.6% /  3.1%
database    sdatabase              1,065   2.6% /  3.1%
==========  ================  ==========  =========================================

- ``shared`` (16,089 paragraphs, 28% of the tree) is excluded: it holds what every application
  uses (common dialogs, Tools - Options, file formats, autopilots, accessibility), so its
  paragraphs are about no application in particular, and 1,439 of its 11,507 distinct texts also
  occur verbatim in an application's module; as a class it would teach "generic" rather than a topic.
- ``sdraw`` (789 paragraphs, 1.9% of the labelled paragraphs, under the 2% floor) is merged into
  ``impress``: Draw and Impress share one drawing core and their help overlaps (285 identical
  texts, the most of any pair of application modules).
- ``chart`` and ``database`` (2.6% each, over the floor) stay their own classes: distinct
  vocabulary, ~1,000 paragraphs each, 56 and 85 files.
- Paths outside ``text/<module>/`` (``noscript.html``) and modules not in ``MODULE_LABELS`` (a
  later LibreOffice may add one) get no label, so the label set never changes silently.

Split: by help file, not by paragraph. A hash of the file path (``help_path``, salted, so it is
independent of the corpus' English-hash split) puts each file in ``train``, ``dev`` or ``test``;
every paragraph of a file, in every language, lands in that file's split, so no paragraph of a
test file trains. The corpus' own ``split`` (by English sentence) and ``corpus.heldout_sources``
(gettext projects) are a different question (distillation) and are ignored here.

Identical texts in several files (boilerplate such as "Related Topics", menu paths shared by
applications) defeat a by-file split: ``drop_conflicts`` removes a text's rows whose label
disagrees and keeps a text in its first split only (train, dev, test), over a whole table. On a
built corpus, whose pair dedup keeps an identical pair in its first file only (by ``origin``,
alphabetical: a text of both sbasic and scalc stays in sbasic), pass the quarantined duplicates
as ``also`` so those conflicts are seen.

On 7.4.7 with the corpus filters, ``drop_conflicts`` removes 1,200 English paragraphs of texts with
two labels and 1,564 repeats of a text in a later split: 20,872 of 23,636 labelled paragraphs stay.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from mdistill.corpus.clean import hash_unit

ORIGIN_PREFIX = "libreoffice-help/"  # what debian_units puts before the help path in ``origin``

# Help module (the folder under text/) -> label. Fixed, not computed from the data: the label
# ids of a trained classifier must not move when a Debian release reshuffles paragraphs.
MODULE_LABELS: dict[str, str] = {
    "scalc": "calc",
    "sbasic": "basic",
    "swriter": "writer",
    "simpress": "impress",
    "sdraw": "impress",  # 1.9% alone; Draw and Impress share the drawing core and much help text
    "smath": "math",
    "schart": "chart",
    "sdatabase": "database",
}
EXCLUDED_MODULES: dict[str, str] = {
    "shared": "help common to all applications (dialogs, options, formats): about no topic in particular",
}
LABELS: tuple[str, ...] = ("calc", "basic", "writer", "impress", "math", "chart", "database")  # label_id order
SPLITS: tuple[str, ...] = ("train", "dev", "test")
DEV_FRACTION = 0.1  # of help files
TEST_FRACTION = 0.2  # of help files: the small classes (chart: 56 files) still get ~11 test files
# A by-file hash split is lumpy for classes of 50-90 files: of the salts v1..v40 this one puts the
# per-label paragraph shares of dev and test closest to the fractions on 7.4.7 (v1: chart dev 2 files).
SALT = "help_topics/v25:"

_ID = {label: i for i, label in enumerate(LABELS)}


def labels() -> list[str]:
    """The labels in ``label_id`` order."""
    return list(LABELS)


def help_path(origin: str | None) -> str | None:
    """``text/...`` help path of a corpus ``origin`` (``libreoffice-help/text/...``) or of a bare
    help path; None for anything else (gettext catalogs, DDTP, user files)."""
    if origin is None:
        return None
    path = origin.removeprefix(ORIGIN_PREFIX)
    return path if path.startswith("text/") else None


def module_of(path: str | None) -> str | None:
    """The help module a path names (``text/scalc/01/x.html`` -> ``scalc``), or None."""
    parts = (help_path(path) or "").split("/")
    return parts[1] if len(parts) >= 3 and parts[1] else None


def label_of(path: str | None) -> str | None:
    """The label of a help path, or None (excluded or unknown module, not a help path)."""
    return MODULE_LABELS.get(module_of(path) or "")


def label_id(label: str) -> int:
    return _ID[label]


def file_split(path: str, dev_fraction: float = DEV_FRACTION, test_fraction: float = TEST_FRACTION) -> str:
    """``train`` / ``dev`` / ``test`` of a help file, by hash of its path (same on every machine)."""
    if not (0 <= dev_fraction and 0 <= test_fraction and dev_fraction + test_fraction < 1):
        raise ValueError(f"dev_fraction {dev_fraction} + test_fraction {test_fraction} must be in [0, 1)")
    u = hash_unit(help_path(path) or path, SALT)
    return "dev" if u < dev_fraction else "test" if u < dev_fraction + test_fraction else "train"


def add_task_columns(
    t: pa.Table,
    *,
    dev_fraction: float = DEV_FRACTION,
    test_fraction: float = TEST_FRACTION,
    path_column: str = "origin",
    keep_unlabelled: bool = False,
) -> pa.Table:
    """Ray Data ``map_batches`` function (``batch_format="pyarrow"``): adds ``label`` (string),
    ``label_id`` (int64) and ``task_split`` (string) from the help path in ``path_column``.

    Rows without a label (``shared``, unknown modules, non-help rows) are dropped unless
    ``keep_unlabelled``: then their label and label_id are null, and task_split is null too
    for rows that are not help paragraphs. Columns of those names already in ``t`` are replaced.
    """
    t = t.drop_columns([c for c in ("label", "label_id", "task_split") if c in t.column_names])
    # A batch holds a few files: decide each distinct path once, then spread by index.
    enc = pc.dictionary_encode(t.column(path_column).combine_chunks().cast(pa.string()))
    paths = enc.dictionary.to_pylist()
    label = [label_of(p) for p in paths]
    split = [file_split(p, dev_fraction, test_fraction) if help_path(p) else None for p in paths]
    idx = enc.indices
    t = t.append_column("label", pa.array(label, pa.string()).take(idx))
    t = t.append_column("label_id", pa.array([None if x is None else _ID[x] for x in label], pa.int64()).take(idx))
    t = t.append_column("task_split", pa.array(split, pa.string()).take(idx))
    return t if keep_unlabelled else t.filter(pc.is_valid(t.column("label")))


def class_balance(t: pa.Table) -> dict[str, dict[str, int]]:
    """Rows per split (train, dev, test, then ``all``) per label (``LABELS`` order, zeros included)
    of a table with ``label`` and ``task_split``; unlabelled rows are not counted."""
    t = t.select(["task_split", "label"]).filter(pc.is_valid(t.column("label")))
    got = {
        (r["task_split"], r["label"]): r["count_all"]
        for r in t.group_by(["task_split", "label"]).aggregate([([], "count_all")]).to_pylist()
    }
    out = {s: {label: got.get((s, label), 0) for label in LABELS} for s in SPLITS}
    out["all"] = {label: sum(out[s][label] for s in SPLITS) for label in LABELS}
    return out


def drop_conflicts(t: pa.Table, text_column: str = "en", also: pa.Table | None = None) -> tuple[pa.Table, dict[str, int]]:
    """Rows of ``t`` whose text is safe to classify and to evaluate on, and the rows dropped per reason.

    - ``ambiguous``: a text seen under more than one label (all its rows go);
    - ``cross_split``: a text's rows outside the first split it occurs in (train, dev, test), so
      no dev or test text was trained on and dev and test share none.

    ``also``: more rows (same task columns) that count as occurrences but are not returned. A built
    corpus keeps each (en, lang, text) pair once, in its first file by ``origin``; the other copies
    are in ``quarantine/`` with reason ``duplicate``: pass those here, or the conflict is invisible.
    Needs the whole table (a text's rows come from many files): run it where the task table is
    collected, not per Ray batch. Kept rows keep their order.
    """
    rank = pc.index_in(t.column("task_split"), pa.array(SPLITS, pa.string()))
    k = pa.table({"text": t.column(text_column), "label": t.column("label"), "rank": rank})
    occurrences = k
    if also is not None:
        extra_rank = pc.index_in(also.column("task_split"), pa.array(SPLITS, pa.string()))
        extra = pa.table({"text": also.column(text_column), "label": also.column("label"), "rank": extra_rank})
        occurrences = pa.concat_tables([k, extra.cast(k.schema)])
    agg = occurrences.group_by("text", use_threads=False).aggregate([("label", "count_distinct"), ("rank", "min")])
    k = k.append_column("i", pa.array(range(t.num_rows), pa.int64())).join(agg, "text").sort_by("i")
    ambiguous = pc.fill_null(pc.greater(k.column("label_count_distinct"), 1), False)
    later = pc.and_(pc.invert(ambiguous), pc.fill_null(pc.not_equal(k.column("rank"), k.column("rank_min")), False))
    keep = pc.invert(pc.or_(ambiguous, later))
    counts = {"ambiguous": pc.sum(ambiguous).as_py() or 0, "cross_split": pc.sum(later).as_py() or 0}
    return t.filter(keep), counts
