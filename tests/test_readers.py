"""Every reader on the bad-input fixture corpus: each row of a file comes out once, kept or with
its reason; unreadable files are errors naming the file and position. No Ray here."""

import re
from collections import Counter

import pytest

from mdistill.config import SourceConfig
from mdistill.corpus.readers import plan_units, read_rows, read_unit
from mdistill.corpus.readers.lines import iter_lines, line_ranges
from mdistill.corpus.schema import RAW_SCHEMA, CorpusReadError

from bad_corpus import EXPECTED_ROWS_IN, UNREADABLE, write_bad_corpus


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    write_bad_corpus(d)
    return d


def sources(d):
    return {
        "bad.tsv": SourceConfig(format="tsv", paths=[str(d / "bad.tsv")], lang="de"),
        "bad.csv": SourceConfig(format="csv", paths=[str(d / "bad.csv")]),
        "bad.jsonl": SourceConfig(format="jsonl", paths=[str(d / "bad.jsonl")]),
        "good.parquet": SourceConfig(format="parquet", paths=[str(d / "good.parquet")]),
        "bad.tmx": SourceConfig(format="tmx", paths=[str(d / "bad.tmx")]),
        "bad.po": SourceConfig(format="po", paths=[str(d / "bad.po")]),
        "latin1.mo": SourceConfig(format="mo", paths=[str(d / "locale")]),
        "hf": SourceConfig(format="hf", paths=[str(d / "hf")], lang="de", columns={"en": "translation.en", "text": "translation.de"}),
    }


def rows_of(src):
    return [r for u in plan_units(src) for r in read_rows(u)]


WANT_REASONS = {
    "bad.tsv": {"empty_line": 1, "wrong_column_count": 2, "invalid_utf8": 1},
    "bad.csv": {"empty_line": 1, "wrong_column_count": 2, "invalid_utf8": 1, "bad_quoting": 1, "unterminated_quote": 2},
    "bad.jsonl": {"empty_line": 1, "invalid_json": 1, "wrong_type": 2, "missing_field": 1, "invalid_utf8": 1, "unknown_language": 1},
    "good.parquet": {"missing_field": 1},
    "bad.tmx": {"no_english": 2, "unknown_language": 1},
    "bad.po": {"fuzzy": 1, "obsolete": 1, "untranslated": 1},
    "latin1.mo": {},
    "hf": {"missing_field": 1},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS_IN))
def test_every_row_of_a_bad_file_comes_out_once(bad, name):
    rows = rows_of(sources(bad)[name])
    assert len(rows) == EXPECTED_ROWS_IN[name]
    reasons = Counter(r.reason for r in rows if r.reason)
    assert reasons == Counter(WANT_REASONS[name])
    for r in rows:
        if r.reason is None:
            assert r.en and r.text and r.lang, r
        if r.reason in ("invalid_utf8", "wrong_column_count", "invalid_json", "wrong_type", "bad_quoting", "unterminated_quote"):
            assert r.raw, r  # the raw content is kept for diagnosis


def test_positions_name_the_line(bad):
    rows = rows_of(sources(bad)["bad.tsv"])
    assert [r.position for r in rows] == list(range(1, 13))
    assert next(r for r in rows if r.reason == "invalid_utf8").position == 6
    csv_rows = rows_of(sources(bad)["bad.csv"])
    assert [r.position for r in csv_rows if r.reason == "unterminated_quote"] == [12, 13]
    assert next(r for r in csv_rows if r.en and r.en.startswith("A field that spans")).text == "Ein Feld über zwei Zeilen."


def test_language_codes_are_normalised(bad):
    assert {r.lang for r in rows_of(sources(bad)["bad.tmx"]) if r.reason is None} == {"de", "fr"}
    assert {r.lang for r in rows_of(sources(bad)["good.parquet"]) if r.reason is None} == {"de", "zh_CN"}
    assert {r.lang for r in rows_of(sources(bad)["bad.jsonl"]) if r.reason is None} == {"de", "fr"}  # de-DE -> de


def test_gettext_charset_plural_and_tmx_inline_codes(bad):
    mo = rows_of(sources(bad)["latin1.mo"])
    assert (bad / "locale/de/LC_MESSAGES/latin1.mo").read_bytes().count("ö".encode("latin-1")) >= 1  # really latin-1 on disk
    assert mo[0].text == "Löschen Sie die ausgewählte Datei jetzt." and mo[0].lang == "de"
    po = rows_of(sources(bad)["bad.po"])
    assert ("%d files were deleted from the disk", "%d Dateien wurden von der Platte gelöscht") in [(r.en, r.text) for r in po]
    tmx = rows_of(sources(bad)["bad.tmx"])
    assert ("Press Enter to confirm the dialog.", "Drücken Sie Eingabe, um den Dialog zu bestätigen.") in [(r.en, r.text) for r in tmx]


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_file_is_an_error_naming_file_and_position(bad, name):
    fmt = {"parquet": "parquet", "tmx": "tmx", "po": "po"}[name.rsplit(".", 1)[1]]
    src = SourceConfig(format=fmt, paths=[str(bad / name)])
    with pytest.raises(CorpusReadError, match=rf"{name}.*{UNREADABLE[name]}"):
        rows_of(src)


def test_read_unit_yields_tables_of_the_raw_schema(bad):
    (u,) = plan_units(sources(bad)["bad.jsonl"])
    tables = list(read_unit(u, rows_per_table=5))
    assert [t.num_rows for t in tables] == [5, 5, 3]
    assert all(t.schema == RAW_SCHEMA for t in tables)
    assert set(tables[0].column("origin").to_pylist()) == {str(bad / "bad.jsonl")}


def test_byte_ranges_cover_every_line_once_with_true_line_numbers(tmp_path):
    p = tmp_path / "big.tsv"
    p.write_bytes(b"".join(f"line {i}\tZeile {i}\n".encode() for i in range(1, 5001)))
    ranges = line_ranges(p, target_bytes=4096)
    assert len(ranges) > 10 and ranges[0][0] == 0 and ranges[-1][1] == p.stat().st_size
    got = [(n, line) for s, e, first in ranges for n, line in iter_lines(p, s, e, first)]
    assert got == [(i, f"line {i}\tZeile {i}".encode()) for i in range(1, 5001)]


def test_tsv_units_split_a_big_file_and_keep_the_header_once(tmp_path):
    p = tmp_path / "h.tsv"
    p.write_text("en\ttext\n" + "".join(f"Sentence number {i} here\tSatz Nummer {i} hier\n" for i in range(3000)))
    units = plan_units(SourceConfig(format="tsv", paths=[str(p)], header=True, lang="de"), range_bytes=8192)
    assert len(units) > 5
    rows = [r for u in units for r in read_rows(u)]
    assert len(rows) == 3000 and rows[0].en == "Sentence number 0 here" and rows[0].position == 2


def test_column_names_need_a_header(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_text("a\tb\n")
    with pytest.raises(ValueError, match="no header"):
        plan_units(SourceConfig(format="tsv", paths=[str(p)], lang="de", columns={"en": "english"}))


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        plan_units(SourceConfig(format="tsv", paths=[str(tmp_path / "nope.tsv")], lang="de"))


def test_hf_reads_a_local_data_file_through_load_dataset(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text('{"en": "Open the file in the editor.", "fr": "Ouvrez le fichier."}\n{"en": "Close it.", "fr": null}\n')
    rows = rows_of(SourceConfig(format="hf", paths=[str(p)], lang="fr", columns={"text": "fr"}))
    assert [(r.en, r.text, r.reason) for r in rows] == [
        ("Open the file in the editor.", "Ouvrez le fichier.", None),
        (None, None, "missing_field"),
    ]


GOOD_JSON = '{"en": "Open the file in the editor.", "text": "Öffnen Sie die Datei im Editor.", "lang": "de"}'


def test_deeply_nested_json_line_is_quarantined_as_invalid_json_at_its_line(tmp_path):
    p = tmp_path / "deep.jsonl"
    deep = '{"en": ' + "[" * 100_000 + "]" * 100_000 + "}"
    p.write_text(f"{GOOD_JSON}\n{deep}\n{GOOD_JSON}\n")
    (u,) = plan_units(SourceConfig(format="jsonl", paths=[str(p)]))
    rows = [r for t in read_unit(u) for r in t.to_pylist()]  # the unit is read to its end
    assert len(rows) == 3  # rows in = kept + rejected
    assert [(r["position"], r["reason"]) for r in rows] == [(1, None), (2, "invalid_json"), (3, None)]
    assert rows[1]["raw"].startswith('{"en": [[[')


def test_deeply_nested_tmx_markup_is_read_without_recursion_error(tmp_path):
    p = tmp_path / "deep.tmx"
    nested = "<hi>" * 5000 + "deep" + "</hi>" * 5000
    p.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<tmx version="1.4"><body>\n'
        f'<tu><tuv xml:lang="en"><seg>Open {nested} file.</seg></tuv><tuv xml:lang="de"><seg>Öffnen.</seg></tuv></tu>\n'
        "</body></tmx>\n",
        encoding="utf-8",
    )
    assert [(r.en, r.text) for r in rows_of(SourceConfig(format="tmx", paths=[str(p)]))] == [("Open deep file.", "Öffnen.")]


@pytest.mark.parametrize(
    "fmt,columns,key",
    [
        ("tsv", {"en": 0, "text": 5}, "columns.text = 5: past the last column"),
        ("tsv", {"en": 0, "text": -1}, "columns.text = -1: a column is a 0-based index >= 0"),
        ("csv", {"en": "en", "text": 7}, "columns.text = 7: past the last column"),
        ("csv", {"en": -2, "text": "text"}, "columns.en = -2"),
    ],
)
def test_column_index_past_the_end_or_negative_is_an_error_naming_file_and_key(tmp_path, fmt, columns, key):
    p = tmp_path / f"pairs.{fmt}"
    sep = "\t" if fmt == "tsv" else ","
    p.write_text(
        f"en{sep}text\nOpen the file now{sep}Öffne die Datei jetzt\n" if fmt == "csv" else f"Open the file now{sep}Öffne die Datei\n"
    )
    with pytest.raises(ValueError, match=rf"pairs\.{fmt}: {re.escape(key)}"):
        rows_of(SourceConfig(format=fmt, paths=[str(p)], lang="de", columns=columns))


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_unknown_encoding_is_an_error_naming_file_and_key(tmp_path, fmt):
    p = tmp_path / f"pairs.{fmt}"
    p.write_text(
        {"jsonl": GOOD_JSON + "\n", "csv": "en,text\nOpen the file now,Öffne die Datei\n"}.get(fmt, "Open the file now\tÖffne die Datei\n")
    )
    src = SourceConfig(format=fmt, paths=[str(p)], lang="de", encoding="latin-9000")
    with pytest.raises(ValueError, match=rf"pairs\.{fmt}: encoding 'latin-9000' \(the source's encoding key\) is not a known text codec"):
        plan_units(src)
    # a unit planned elsewhere fails at reading the same way, as an error naming the file
    good = plan_units(src.model_copy(update={"encoding": "utf-8"}))[0]
    bad = {**good, "args": {**good["args"], "encoding": "latin-9000"}}
    with pytest.raises(CorpusReadError, match=rf"pairs\.{fmt}: .*encoding 'latin-9000'"):
        list(read_unit(bad))


def test_utf16_for_a_line_based_format_is_an_error_naming_file_and_key(tmp_path):
    p = tmp_path / "wide.tsv"
    p.write_text("Open the file now\tÖffne die Datei\n", encoding="utf-16")
    with pytest.raises(ValueError, match=r"wide\.tsv: encoding 'utf-16' .* not ASCII-compatible"):
        plan_units(SourceConfig(format="tsv", paths=[str(p)], lang="de", encoding="utf-16"))


def test_utf8_bom_before_a_header_or_first_line_is_dropped(tmp_path):
    bom = "\ufeff"
    tsv = tmp_path / "bom.tsv"
    tsv.write_text(f"{bom}en\ttext\nOpen the file now\tÖffne die Datei\n", encoding="utf-8")
    rows = rows_of(SourceConfig(format="tsv", paths=[str(tsv)], lang="de", header=True))
    assert [(r.en, r.text, r.position, r.reason) for r in rows] == [("Open the file now", "Öffne die Datei", 2, None)]
    csv_ = tmp_path / "bom.csv"
    csv_.write_text(f"{bom}en,text,lang\nOpen the file now,Öffne die Datei,de\n", encoding="utf-8")
    assert [(r.en, r.lang) for r in rows_of(SourceConfig(format="csv", paths=[str(csv_)]))] == [("Open the file now", "de")]
    no_header = tmp_path / "bom_noheader.tsv"
    no_header.write_text(f"{bom}Open the file now\tÖffne die Datei\n", encoding="utf-8")
    assert [r.en for r in rows_of(SourceConfig(format="tsv", paths=[str(no_header)], lang="de"))] == ["Open the file now"]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_text(f"{bom}{GOOD_JSON}\n", encoding="utf-8")
    assert [r.reason for r in rows_of(SourceConfig(format="jsonl", paths=[str(jsonl)]))] == [None]


def _compress(kind: str, data: bytes) -> bytes:
    import bz2
    import gzip
    import lzma

    if kind == "zstd":  # no zstd module in the stdlib here: its magic number and a frame's worth of bytes
        return b"\x28\xb5\x2f\xfd" + bytes(range(256))
    return {"gzip": gzip.compress, "xz": lzma.compress, "bzip2": bz2.compress}[kind](data)


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "zstd"])
@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl", "tmx", "po", "parquet"])
def test_compressed_file_is_an_error_saying_it_is_compressed(tmp_path, fmt, kind):
    p = tmp_path / f"pairs.{fmt}.gz"
    p.write_bytes(_compress(kind, "en,text,lang\nOpen the file now,Öffne die Datei,de\n".encode() * 50))
    with pytest.raises(CorpusReadError, match=rf"pairs\.{fmt}\.gz: the file is {kind}-compressed; .* decompress it first"):
        rows_of(SourceConfig(format=fmt, paths=[str(p)], lang="de"))


def test_text_that_starts_like_a_magic_number_is_not_taken_for_compressed(tmp_path):
    p = tmp_path / "bzh.tsv"
    p.write_text("BZh9 is a made-up word\tBZh9 ist ein erfundenes Wort\n")
    assert len(rows_of(SourceConfig(format="tsv", paths=[str(p)], lang="de"))) == 1


def test_a_folder_source_says_which_compressed_files_it_does_not_read(tmp_path, capsys):
    (tmp_path / "a.tsv").write_text("Open the file now\tÖffne die Datei\n")
    (tmp_path / "b.tsv.gz").write_bytes(_compress("gzip", b"Close the file\tSchliesse die Datei\n"))
    assert len(rows_of(SourceConfig(format="tsv", paths=[str(tmp_path)], lang="de"))) == 1
    out = capsys.readouterr().out
    assert "1 compressed file(s)" in out and "b.tsv.gz" in out, out


PO_HEADER = 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset={}\\n"\n"Language: de\\n"\n\n'


def test_po_declared_latin1_but_written_in_utf8_is_read_as_utf8_with_a_warning(tmp_path, capsys):
    p = tmp_path / "mislabelled.po"
    p.write_bytes(
        (PO_HEADER.format("ISO-8859-1") + 'msgid "Delete the file now."\nmsgstr "Löschen Sie die Datei jetzt."\n').encode("utf-8")
    )
    rows = rows_of(SourceConfig(format="po", paths=[str(p)]))
    assert [r.text for r in rows] == ["Löschen Sie die Datei jetzt."]  # not "LÃ¶schen"
    out = capsys.readouterr().out
    assert "mislabelled.po" in out and "ISO-8859-1" in out and "UTF-8" in out, out
    # a catalog really in latin-1 keeps its charset
    real = tmp_path / "latin1.po"
    real.write_bytes(
        (PO_HEADER.format("ISO-8859-1") + 'msgid "Delete the file now."\nmsgstr "Löschen Sie die Datei jetzt."\n').encode("latin-1")
    )
    assert [r.text for r in rows_of(SourceConfig(format="po", paths=[str(real)]))] == ["Löschen Sie die Datei jetzt."]
    assert "latin1.po" not in capsys.readouterr().out
