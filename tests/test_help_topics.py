"""Help-topic task: labels from help paths, a by-file split, the task columns (no Ray, no network)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pytest

from mdistill.corpus.libreoffice import file_pairs
from mdistill.corpus.schema import RAW_SCHEMA, RowBatcher
from mdistill.tasks import help_topics as ht


@pytest.mark.parametrize(
    ("path", "module", "label"),
    [
        ("text/scalc/01/04060101.html", "scalc", "calc"),
        ("libreoffice-help/text/scalc/01/04060101.html", "scalc", "calc"),  # a corpus origin
        ("text/swriter/guide/main.html", "swriter", "writer"),
        ("text/sbasic/shared/03010103.html", "sbasic", "basic"),  # sbasic's own "shared" folder is Basic
        ("text/sbasic/python/python_programming.html", "sbasic", "basic"),
        ("text/simpress/guide/main.html", "simpress", "impress"),
        ("text/sdraw/guide/align_arrange.html", "sdraw", "impress"),  # merged: under the 2% floor
        ("text/smath/01/03090100.html", "smath", "math"),
        ("text/schart/01/type_area.html", "schart", "chart"),
        ("text/sdatabase/main.html", "sdatabase", "database"),
        ("text/shared/01/01010000.html", "shared", None),  # excluded: common to all applications
        ("text/sglobal/main.html", "sglobal", None),  # unknown module: no label, never a new class
        ("noscript.html", None, None),
        ("text/scalc.html", None, None),
        ("usr/share/locale/de/LC_MESSAGES/git.mo", None, None),  # gettext origin
        (None, None, None),
    ],
)
def test_label_of_real_looking_paths(path, module, label):
    assert ht.module_of(path) == module
    assert ht.label_of(path) == label


def test_label_set_is_fixed_and_documented():
    assert ht.labels() == ["calc", "basic", "writer", "impress", "math", "chart", "database"]
    assert 5 <= len(ht.labels()) <= 8
    assert set(ht.MODULE_LABELS.values()) == set(ht.labels())
    assert [ht.label_id(x) for x in ht.labels()] == list(range(len(ht.labels())))
    assert "shared" in ht.EXCLUDED_MODULES and "shared" not in ht.MODULE_LABELS
    assert ht.MODULE_LABELS["sdraw"] == ht.MODULE_LABELS["simpress"]


def test_file_split_is_deterministic_and_near_its_fractions():
    paths = [f"text/scalc/01/{i:08d}.html" for i in range(3000)]
    splits = [ht.file_split(p, 0.1, 0.2) for p in paths]
    assert splits == [ht.file_split(p, 0.1, 0.2) for p in paths]
    assert 0.08 < splits.count("dev") / 3000 < 0.12 and 0.17 < splits.count("test") / 3000 < 0.23
    # an origin and its bare help path are the same file
    assert all(ht.file_split(ht.ORIGIN_PREFIX + p) == ht.file_split(p) for p in paths[:50])
    assert {ht.file_split(p, 0.0, 0.0) for p in paths} == {"train"}
    with pytest.raises(ValueError):
        ht.file_split(paths[0], 0.5, 0.5)


def _rows(files: dict[str, int]) -> pa.Table:
    """Corpus-like rows (``RAW_SCHEMA``): ``n`` English paragraphs per help file, de and fr each."""
    tables = []
    for rel, n in files.items():
        rows = [(f"{rel} paragraph {i}", f"Absatz {i}", lang, i, None, None) for i in range(1, n + 1) for lang in ("de", "fr")]
        tables.append(RowBatcher("libreoffice", ht.ORIGIN_PREFIX + rel).table(rows))
    return pa.concat_tables(tables)


FILES = {
    **{f"text/scalc/01/{i:08d}.html": 3 for i in range(40)},
    **{f"text/swriter/guide/p{i}.html": 2 for i in range(40)},
    **{f"text/sdraw/guide/d{i}.html": 1 for i in range(10)},
    **{f"text/shared/01/s{i}.html": 4 for i in range(10)},
    "noscript.html": 1,
}


def test_task_columns_have_the_right_types_and_drop_the_unlabelled():
    t = _rows(FILES)
    out = ht.add_task_columns(t)
    assert out.schema.field("label").type == pa.string()
    assert out.schema.field("label_id").type == pa.int64()
    assert out.schema.field("task_split").type == pa.string()
    assert out.column_names == [*RAW_SCHEMA.names, "label", "label_id", "task_split"]
    assert out.num_rows == t.num_rows - 2 * (10 * 4 + 1)  # shared and noscript rows go
    assert set(out.column("label").to_pylist()) == {"calc", "writer", "impress"}
    for lab, lid in zip(out.column("label").to_pylist(), out.column("label_id").to_pylist()):
        assert ht.labels()[lid] == lab
    # keep_unlabelled: every row stays; excluded help paragraphs still have a split, nulls elsewhere
    kept = ht.add_task_columns(t, keep_unlabelled=True)
    assert kept.num_rows == t.num_rows
    by_origin = {o: (lab, s) for o, lab, s in zip(*(kept.column(c).to_pylist() for c in ("origin", "label", "task_split")))}
    assert by_origin[ht.ORIGIN_PREFIX + "text/shared/01/s0.html"][0] is None
    assert by_origin[ht.ORIGIN_PREFIX + "text/shared/01/s0.html"][1] in ht.SPLITS
    assert by_origin[ht.ORIGIN_PREFIX + "noscript.html"] == (None, None)
    # applying it twice replaces the columns instead of duplicating them
    assert ht.add_task_columns(out).equals(out)


def test_every_file_lands_in_exactly_one_split_whatever_the_batching():
    t = _rows(FILES)
    whole = ht.add_task_columns(t)
    # Ray hands map_batches arbitrary slices: the split must not depend on them
    parts = pa.concat_tables([ht.add_task_columns(t.slice(i, 7)) for i in range(0, t.num_rows, 7)])
    assert parts.equals(whole)
    splits = defaultdict(set)
    for o, s in zip(whole.column("origin").to_pylist(), whole.column("task_split").to_pylist()):
        splits[o].add(s)
    assert all(len(s) == 1 for s in splits.values())
    assert {next(iter(s)) for s in splits.values()} == set(ht.SPLITS)  # 90 files: all three splits occur
    assert all(next(iter(splits[o])) == ht.file_split(o) for o in splits)


def test_class_balance_counts_rows_per_split_and_label():
    t = ht.add_task_columns(_rows(FILES), keep_unlabelled=True)
    b = ht.class_balance(t)
    assert list(b) == [*ht.SPLITS, "all"]
    assert all(list(v) == ht.labels() for v in b.values())
    assert b["all"] == {"calc": 240, "basic": 0, "writer": 160, "impress": 20, "math": 0, "chart": 0, "database": 0}
    assert sum(b["all"].values()) == sum(sum(b[s].values()) for s in ht.SPLITS)
    expected = defaultdict(int)
    for rel, n in FILES.items():
        if ht.label_of(rel):
            expected[(ht.file_split(rel), ht.label_of(rel))] += 2 * n
    assert all(b[s][lab] == expected[(s, lab)] for s in ht.SPLITS for lab in ht.labels())


def test_drop_conflicts_removes_two_label_texts_and_later_split_repeats():
    files = sorted(FILES)[:90]
    train = next(f for f in files if ht.file_split(f) == "train" and ht.label_of(f) == "calc")
    train_w = next(f for f in files if ht.file_split(f) == "train" and ht.label_of(f) == "writer")
    test = next(f for f in files if ht.file_split(f) == "test" and ht.label_of(f) == "calc")
    dev = next(f for f in files if ht.file_split(f) == "dev" and ht.label_of(f) == "calc")
    en = [
        "Related Topics",
        "Related Topics",
        "Choose Data - Sort",
        "Choose Data - Sort",
        "Dev and test only",
        "Dev and test only",
        "Unique",
    ]
    origin = [train, train_w, train, test, dev, test, test]
    t = ht.add_task_columns(pa.table({"en": en, "origin": [ht.ORIGIN_PREFIX + o for o in origin]}))
    kept, dropped = ht.drop_conflicts(t)
    assert dropped == {"ambiguous": 2, "cross_split": 2}
    got = list(zip(kept.column("en").to_pylist(), kept.column("task_split").to_pylist()))
    assert got == [("Choose Data - Sort", "train"), ("Dev and test only", "dev"), ("Unique", "test")]
    # a copy known only from elsewhere (the corpus' quarantined duplicates) still counts
    elsewhere = ht.add_task_columns(pa.table({"en": ["Unique"], "origin": [ht.ORIGIN_PREFIX + train_w]}))
    kept, dropped = ht.drop_conflicts(t, also=elsewhere)
    assert "Unique" not in kept.column("en").to_pylist() and dropped["ambiguous"] == 3


def test_corpus_origin_of_a_help_file_carries_its_label(tmp_path: Path):
    """The planner's origin (``libreoffice-help/<rel>``) and the reader's rows: what the task reads."""
    from mdistill.config import SourceConfig
    from mdistill.stages.corpus import debian_units

    help_root = tmp_path / "debian" / "libreoffice-help" / "usr" / "share" / "libreoffice" / "help"
    for lang in ("en-US", "de"):
        p = help_root / lang / "text" / "scalc" / "01" / "04060101.html"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f'<p id="par_id1">{"Sum of values" if lang == "en-US" else "Summe der Werte"}</p>', encoding="utf-8")
    units, _ = debian_units(SourceConfig(format="debian", parts=["libreoffice"]), ["de"], tmp_path)
    assert [u["origin"] for u in units] == ["libreoffice-help/text/scalc/01/04060101.html"]
    rows = list(file_pairs(help_root, units[0]["path"], ["de"]))
    t = ht.add_task_columns(RowBatcher(units[0]["source"], units[0]["origin"]).table(rows))
    assert t.column("label").to_pylist() == ["calc"] and t.column("label_id").to_pylist() == [ht.label_id("calc")]
