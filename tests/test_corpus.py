from pathlib import Path

import pyarrow as pa
import pytest

from mdistill.corpus.clean import assign_split, clean_table, normalize_text, reasons
from mdistill.corpus.langs import normalize_lang
from mdistill.corpus.libreoffice import file_pairs, paragraphs
from mdistill.corpus.schema import RAW_SCHEMA, Row, RowBatcher

F = dict(langs=["de", "zh_CN"], min_words=3, max_words=64, max_chars=1000, max_length_ratio=3.0, min_chars=2)
SPLIT = dict(dev_fraction=0.1, test_fraction=0.1, train_fraction=1.0)


def reject_reason(en, text, lang="de", prior=None, **f):
    return reasons(
        pa.array([en], pa.string()), pa.array([text], pa.string()), pa.array([lang], pa.string()), pa.array([prior], pa.string()), **f
    )[0].as_py()


@pytest.mark.parametrize(
    "code,want",
    [
        ("de", "de"),
        ("de_DE", "de"),
        ("de-DE", "de"),
        ("DE", "de"),
        ("zh_CN", "zh_CN"),
        ("zh-Hans", "zh_CN"),
        ("zh-cn", "zh_CN"),
        ("pt-BR", "pt_BR"),
        ("zh", "zh_CN"),
        ("de_DE.UTF-8", "de"),
        ("sr@latin", "sr"),
    ],
)
def test_normalize_lang(code, want):
    assert normalize_lang(code) == want


def test_normalize_lang_rejects_garbage():
    with pytest.raises(ValueError):
        normalize_lang("not a lang")


def test_normalize_text():
    assert normalize_text("  Cafe\u0301\x00 \t bar\u200b ") == "Café bar"
    assert normalize_text("a\u3000b\xa0c\r\nd\x7f") == "a b c d"  # Unicode spaces, CRLF, DEL


@pytest.mark.parametrize(
    "en,text,reason",
    [
        ("", "x", "empty"),
        ("Open the file now", "", "empty"),
        ("Open it", "Öffne es", "too_short"),
        ("Open the file now", "Open the file now", "identical"),
        ("Open the file now please", "Öf", "length_ratio"),
        ("a " * 70, "b " * 70, "too_long"),
        ("Open the file now", "Öffne jetzt die Datei", None),
        ("%s", "%s", "format_only"),
        ("{0}: %(name)s <b>", "{0}: %(name)s <b>", "format_only"),
        ("Delete %d files from the disk", "%d Dateien von der Platte löschen", None),
        ("x " * 600, "y " * 600, "too_many_chars"),
        ("Open the file now", "Ö", "too_few_chars"),
    ],
)
def test_reject_reason(en, text, reason):
    assert reject_reason(normalize_text(en), normalize_text(text), **F) == reason


def test_length_ratio_counts_bytes_so_cjk_is_not_rejected():
    assert reject_reason("Opens the Font dialog for the selection.", "打开所选内容的字体对话框。", "zh_CN", **F) is None


def test_unselected_language_and_prior_reason_win():
    assert reject_reason("Open the file now", "Ouvrir le fichier", "fr", **F) == "lang_not_selected"
    assert reject_reason("", "", "de", "invalid_utf8", **F) == "invalid_utf8"


def test_clean_table_keeps_every_row_and_splits_kept_ones():
    rows = [
        Row("Open  the file now", "Öffne jetzt die Datei", "de", 1),
        Row(None, None, "de", 2, "invalid_utf8", "\\xff"),
        Row("Open it", "Öffne", "de", 3),
    ]
    t = RowBatcher("tsv", "f.tsv").table(rows)
    assert t.schema == RAW_SCHEMA
    out = clean_table(t, **F, **SPLIT, buckets=4)
    assert out.num_rows == 3
    assert out.column("reason").to_pylist() == [None, "invalid_utf8", "too_short"]
    assert out.column("en").to_pylist()[0] == "Open the file now"
    assert out.column("split").to_pylist()[0] in {"dev", "test", "train"} and out.column("split").to_pylist()[1:] == [None, None]
    assert all(0 <= b < 4 for b in out.column("bucket").to_pylist())


def test_split_depends_on_english_only_and_is_stable():
    ens = [f"Sentence number {i} about spreadsheets." for i in range(2000)]
    splits = [assign_split(e, 0.1, 0.1, 0.5) for e in ens]
    assert splits == [assign_split(e, 0.1, 0.1, 0.5) for e in ens]
    assert 0.05 < splits.count("dev") / len(ens) < 0.15 and 0.05 < splits.count("test") / len(ens) < 0.15
    assert {"dev", "test", "train", "unused"} == set(splits)


def test_heldout_sources_never_share_an_english_with_train():
    """A held-out source's row is ``heldout`` unless its English hashes into train (then ``unused``):
    whatever the other sources hold, no held-out English is a training English."""
    ens = [f"Sentence number {i} about spreadsheets." for i in range(400)]
    rows = [Row(e, f"Satz {i} über Tabellen.", "de", i + 1) for i, e in enumerate(ens)]
    gettext = RowBatcher("gettext:git", "gettext/git/de.mo").table(rows)
    help_ = RowBatcher("libreoffice", "libreoffice-help/text/scalc/a.xhp").table(rows)
    kw = {**F, "dev_fraction": 0.1, "test_fraction": 0.1, "train_fraction": 0.5}
    for patterns in (["gettext:*"], ["gettext/git/*"]):  # by source label or by file
        held = clean_table(gettext, **kw, heldout_sources=patterns).column("split").to_pylist()
        kept = clean_table(help_, **kw, heldout_sources=patterns).column("split").to_pylist()
        assert set(held) == {"heldout", "unused"} and "heldout" not in kept
        train_en = {e for e, s in zip(ens, kept) if s == "train"}
        assert {e for e, s in zip(ens, held) if s == "heldout"}.isdisjoint(train_en)
        assert [s == "unused" for s in held] == [s == "train" for s in kept]  # the same English hash decides
    assert "heldout" not in clean_table(gettext, **kw, heldout_sources=["ddtp"]).column("split").to_pylist()


def _write_help(root: Path, lang: str, body: str) -> None:
    p = root / lang / "text" / "swriter" / "a.html"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"<html><body>{body}</body></html>", encoding="utf-8")


def test_libreoffice_pairs_align_by_paragraph_id(tmp_path):
    _write_help(
        tmp_path,
        "en-US",
        '<h1 id="hd_id1">Title <b>bold</b></h1><p id="par_id2">First &amp; <a href="x">link</a> text.</p><p id="par_id3">Only English.</p><br>',
    )
    _write_help(tmp_path, "de", '<h1 id="hd_id1">Titel <b>fett</b></h1><p id="par_id2">Erster &amp; <a href="x">Link</a> Text.</p>')
    assert paragraphs(tmp_path / "en-US/text/swriter/a.html")["par_id2"] == "First & link text."
    rows = list(file_pairs(tmp_path, "text/swriter/a.html", ["de"]))
    assert [(r.en, r.text, r.position) for r in rows] == [("Title bold", "Titel fett", 1), ("First & link text.", "Erster & Link Text.", 2)]


def test_libreoffice_missing_language_is_a_clear_error(tmp_path):
    _write_help(tmp_path, "en-US", '<p id="par_id2">x</p>')
    with pytest.raises(FileNotFoundError, match="'fr'"):
        list(file_pairs(tmp_path, "text/swriter/a.html", ["fr"]))
