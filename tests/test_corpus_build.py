"""The corpus recipe on real Ray (local, 2 CPUs) over the bad-input corpus in every format:
the build completes, every row is kept or quarantined with its reason, per file."""

import json

import pyarrow.parquet as pq
import pytest

from mdistill.config import load_config
from mdistill.corpus.schema import CorpusReadError

from bad_corpus import EXPECTED_ROWS_IN, write_bad_corpus


def _sources(d):
    return [
        {"format": "tsv", "paths": [str(d / "bad.tsv")], "lang": "de"},
        {"format": "csv", "paths": [str(d / "bad.csv")]},
        {"format": "jsonl", "paths": [str(d / "bad.jsonl")]},
        {"format": "parquet", "paths": [str(d / "good.parquet")]},
        {"format": "hf", "paths": [str(d / "hf")], "lang": "de", "columns": {"en": "translation.en", "text": "translation.de"}},
        {"format": "tmx", "paths": [str(d / "bad.tmx")]},
        {"format": "po", "paths": [str(d / "bad.po")]},
        {"format": "mo", "paths": [str(d / "locale")]},
    ]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_bad_corpus_in_every_format_accounts_for_every_row(tmp_path, ray_shared):
    from mdistill.stages.corpus import build_corpus

    d = tmp_path / "bad"
    write_bad_corpus(d)
    cfg = load_config(
        None,
        [
            f"corpus.sources={json.dumps(_sources(d))}",
            "corpus.langs=[de, fr]",
            "corpus.dev_fraction=0.3",
            "corpus.test_fraction=0.2",
            "corpus.bucket_bytes=65536",
        ],
    ).corpus
    corpus = build_corpus(cfg, tmp_path / "cache", tmp_path / "corpus")
    out, m, reused = corpus.dir, corpus.manifest, corpus.reused
    assert not reused and m["buckets"] > 1  # several dedup buckets: duplicates must still meet

    # per file: rows in = the file's rows by its format's rules (counted by hand), = kept + rejected
    by_name = {f.split("/")[-1] if "/hf" not in f else "hf": v for f, v in m["files"].items()}
    for name, want in EXPECTED_ROWS_IN.items():
        langs = by_name[name]["languages"]
        assert sum(v["rows_in"] for v in langs.values()) == want, name
        for v in langs.values():
            assert v["rows_in"] == v["kept"] + sum(v["rejected"].values())
    assert m["rows_read"] == m["rows_in"] == sum(EXPECTED_ROWS_IN.values())

    pairs, quarantine = pq.read_table(out / "pairs").to_pandas(), pq.read_table(out / "quarantine").to_pandas()
    assert len(pairs) == m["kept"] and len(quarantine) == m["rows_in"] - m["kept"]
    assert quarantine.reason.notna().all()
    reasons = set(quarantine.reason)
    assert {
        "duplicate",
        "too_many_chars",
        "format_only",
        "identical",
        "lang_not_selected",
        "invalid_utf8",
        "wrong_column_count",
        "fuzzy",
        "unterminated_quote",
    } <= reasons
    # exact duplicates across files and formats: the pair is kept once
    assert pairs.duplicated(["en", "lang", "text"]).sum() == 0
    assert ((pairs.en == "Open the file in the editor.") & (pairs.lang == "de")).sum() == 1
    # NUL bytes cleaned, the pair kept; no English sentence in two splits
    assert "Open the file now please" in set(pairs.en)
    assert pairs.groupby("en").split.nunique().max() == 1
    english = pq.read_table(out / "english").to_pandas()
    assert sorted(english.en) == sorted(set(pairs.en)) and sum(m["english_sentences"].values()) == len(english)

    # the same inputs and settings: reused, not rebuilt
    again = build_corpus(cfg, tmp_path / "cache", tmp_path / "corpus")
    again, reused = again.dir, again.reused
    assert reused and again == out


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_an_unreadable_file_stops_the_build_naming_it(tmp_path, ray_shared):
    from mdistill.stages.corpus import build_corpus

    d = tmp_path / "bad"
    write_bad_corpus(d)
    sources = [
        {"format": "tsv", "paths": [str(d / "bad.tsv")], "lang": "de"},
        {"format": "parquet", "paths": [str(d / "truncated.parquet")]},
    ]
    cfg = load_config(None, [f"corpus.sources={json.dumps(sources)}", "corpus.langs=[de]"]).corpus
    with pytest.raises(CorpusReadError, match="truncated.parquet.*footer"):
        build_corpus(cfg, tmp_path / "cache", tmp_path / "corpus")
    assert not (tmp_path / "corpus").exists()  # nothing half-built is left where a corpus would be reused


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_cli_corpus_build_from_a_config(tmp_path, ray_shared):
    from typer.testing import CliRunner

    from mdistill.cli import app

    d = tmp_path / "bad"
    write_bad_corpus(d)
    cfg = tmp_path / "corpus.yaml"
    cfg.write_text(
        f"cache_dir: {tmp_path / 'cache'}\ncorpus:\n  langs: [de]\n  sources:\n    - {{format: tsv, paths: [{d / 'bad.tsv'}], lang: de}}\n"
    )
    r = CliRunner().invoke(app, ["corpus", "build", str(cfg), "corpus.min_words=4", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "rows in 12" in r.output and "corpus built" in r.output
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["rows_in"] == 12 and m["rows_in"] == m["kept"] + sum(m["rejected"].values())
    bad = CliRunner().invoke(app, ["corpus", "build", str(cfg), "corpus.min_word=4"])
    assert bad.exit_code == 2 and "corpus.min_word" in bad.output
