from pathlib import Path

import pyarrow as pa
import pytest

from mdistill.corpus.clean import assign_split, clean_table, normalize_lang, normalize_text, reject_reason
from mdistill.corpus.libreoffice import iter_pairs, paragraphs

F = dict(min_words=3, max_words=64, max_chars=1000, max_length_ratio=3.0)


@pytest.mark.parametrize("code,want", [("de", "de"), ("de_DE", "de"), ("de-DE", "de"), ("DE", "de"), ("zh_CN", "zh_CN"), ("zh-Hans", "zh_CN"), ("zh-cn", "zh_CN"), ("pt-BR", "pt_BR")])
def test_normalize_lang(code, want):
    assert normalize_lang(code) == want


def test_normalize_lang_rejects_garbage():
    with pytest.raises(ValueError):
        normalize_lang("not a lang")


def test_normalize_text():
    assert normalize_text("  Cafe\u0301\x00 \t bar\u200b ") == "Café bar"


@pytest.mark.parametrize(
    "en,text,reason",
    [
        ("", "x", "empty"),
        ("Open the file now", "", "empty"),
        ("Open it", "Öffne es", "too_short"),
        ("Open the file now", "Open the file now", "identical"),
        ("Open the file now please", "Ö", "length_ratio"),
        ("a " * 70, "b " * 70, "too_long"),
        ("Open the file now", "Öffne jetzt die Datei", None),
    ],
)
def test_reject_reason(en, text, reason):
    assert reject_reason(normalize_text(en), normalize_text(text), **F) == reason


def test_length_ratio_counts_bytes_so_cjk_is_not_rejected():
    assert reject_reason("Opens the Font dialog for the selection.", "打开所选内容的字体对话框。", **F) is None


def test_clean_table_keeps_every_row_and_types_reason_as_string():
    t = pa.table({"en": ["Open the file now", "Open the file now"], "text": ["Öffne jetzt die Datei", "Öffne jetzt die Datei"], "lang": ["de", "de"]})
    out = clean_table(t, **F)
    assert out.num_rows == t.num_rows
    assert out.schema.field("reason").type == pa.string()
    assert out.column("reason").null_count == 2


def test_split_depends_on_english_only_and_is_stable():
    ens = [f"Sentence number {i} about spreadsheets." for i in range(2000)]
    splits = [assign_split(e, 0.1, 0.5) for e in ens]
    assert splits == [assign_split(e, 0.1, 0.5) for e in ens]
    assert 0.05 < splits.count("dev") / len(ens) < 0.15
    assert {"dev", "train", "unused"} == set(splits)


def _write_help(root: Path, lang: str, body: str) -> None:
    p = root / lang / "text" / "swriter" / "a.html"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"<html><body>{body}</body></html>", encoding="utf-8")


def test_libreoffice_pairs_align_by_paragraph_id(tmp_path):
    _write_help(tmp_path, "en-US", '<h1 id="hd_id1">Title <b>bold</b></h1><p id="par_id2">First &amp; <a href="x">link</a> text.</p><p id="par_id3">Only English.</p><br>')
    _write_help(tmp_path, "de", '<h1 id="hd_id1">Titel <b>fett</b></h1><p id="par_id2">Erster &amp; <a href="x">Link</a> Text.</p>')
    assert paragraphs(tmp_path / "en-US/text/swriter/a.html")["par_id2"] == "First & link text."
    rows = list(iter_pairs(tmp_path, "de"))
    assert [(r["en"], r["text"]) for r in rows] == [("Title bold", "Titel fett"), ("First & link text.", "Erster & Link Text.")]
    assert rows[0]["source"] == "libreoffice:text/swriter/a.html#hd_id1"


def test_libreoffice_missing_language_is_a_clear_error(tmp_path):
    _write_help(tmp_path, "en-US", '<p id="par_id2">x</p>')
    with pytest.raises(FileNotFoundError, match="'fr'"):
        list(iter_pairs(tmp_path, "fr"))
