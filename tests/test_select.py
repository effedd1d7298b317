"""Selection on a real corpus folder (Ray Data, local): one translation per (English, language),
the dev sample's first N English sources per language, and the student's rows."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mdistill.corpus.dedup import number_variants
from mdistill.stages.select import first_sources


def test_variants_number_translations_by_text():
    t = pa.table({"en": ["b", "a", "a", "a", "b"], "lang": ["de", "de", "de", "fr", "de"], "text": ["y", "z", "x", "q", "x"]})
    assert number_variants(t).to_pylist() == [1, 1, 0, 0, 0]  # (a, de): x < z; (b, de): x < y


def test_first_sources_is_a_streaming_top_n():
    rows = [{"en": f"e{i:03d}", "lang": lang, "text": f"{lang}{i}"} for lang in ("de", "fr") for i in range(50)]
    t = pa.Table.from_pylist(rows[::-1])
    blocks = [t.slice(i, 7) for i in range(0, t.num_rows, 7)]
    merged = pa.table({"en": pa.array([], pa.string()), "lang": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    for b in blocks:  # as select_data merges the blocks' own top-n
        merged = first_sources(pa.concat_tables([merged, first_sources(b, 5)]), 5)
    assert merged.to_pylist() == first_sources(t, 5).to_pylist()
    assert [r["en"] for r in merged.to_pylist() if r["lang"] == "fr"] == [f"e{i:03d}" for i in range(5)]
    assert first_sources(t, None).num_rows == 100


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_selection_matches_a_pandas_reference(tmp_path, pairs, ray_shared):
    import pyarrow.parquet as pq
    import ray

    from mdistill.config import load_config
    from mdistill.stages.corpus import build_corpus
    from mdistill.stages.select import select_data

    src = tmp_path / "pairs.parquet"
    extra = [{"en": e, "lang": lg, "text": t + " (variant)"} for e, lg, t in zip(pairs.en[:40], pairs.lang[:40], pairs.text[:40])]
    pq.write_table(pa.Table.from_pylist(pairs.to_dict("records") + extra), src)
    cfg = load_config(
        None,
        [
            f"corpus.sources=[{{format: parquet, paths: [{src}]}}]",
            "corpus.langs=[de, fr]",
            "corpus.dev_fraction=0.3",
            "corpus.train_fraction=1.0",
        ],
    )
    corpus = build_corpus(cfg.corpus, tmp_path / "cache")
    data = select_data(corpus, cfg.corpus.langs, 20)

    # the reference: what the run selected before it streamed (pandas over the whole corpus)
    df = pq.read_table(corpus.pairs).to_pandas()
    df = df.sort_values(["split", "lang", "en", "text"]).drop_duplicates(["en", "lang"])
    train, dev = df[df.split == "train"], df[df.split == "dev"].groupby("lang").head(20)
    assert data.counts.train_pairs == train.groupby("lang").size().to_dict()
    assert data.counts.train_english == train.en.nunique()
    assert (
        data.dev.to_pandas()[["en", "lang", "text"]].values.tolist()
        == dev.sort_values(["lang", "en"])[["en", "lang", "text"]].values.tolist()
    )

    rows = pa.concat_tables(ray.get(data.rows().to_arrow_refs())).to_pandas()
    assert len(rows) == data.counts.student_rows
    assert sorted(rows[rows.lang == "en"].text) == sorted([*train.en.unique(), *dev.en.unique()])  # every English source once
    assert len(rows[(rows.lang != "en") & (rows.split == "train")]) == len(train)
    assert (rows.en_key.str.len() == 32).all() and (rows[rows.lang == "en"].key == rows[rows.lang == "en"].en_key).all()


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_broadcast_and_hash_joins_agree(tmp_path, ray_shared, monkeypatch):
    """The training set's joins take a broadcast path for a small cache and a hash join on Ray Data
    for a big one: the same rows either way (inner: payload added; anti: the unmatched rows)."""
    import numpy as np
    import pyarrow.parquet as pq
    import ray

    from mdistill.stages import cache_pass
    from mdistill.teacher.cache import embeddings_table

    keys = [f"k{i}" for i in range(300)]
    files = []
    for i in range(3):  # the cache: 3 shards, vectors i/1000
        f = tmp_path / f"shard{i}.parquet"
        pq.write_table(
            embeddings_table(
                keys[i * 100 : (i + 1) * 100],
                np.arange(i * 100, (i + 1) * 100, dtype=np.float32)[:, None] / 1000 + np.zeros((100, 4), np.float32),
            ),
            f,
        )
        files.append(str(f))
    left = ray.data.from_items([{"en_key": f"k{i}", "row": i} for i in range(250, 400)])  # 50 cached, 100 not

    def run(**kw):
        inner = cache_pass.join_files(left, files, key="key", left_key="en_key", columns=["embedding"], **kw)
        return sorted((r["row"], round(float(r["embedding"][0]), 3)) if "embedding" in r else r["row"] for r in inner.take_all())

    small = run(), run(anti=True)
    monkeypatch.setattr(cache_pass, "BROADCAST_BYTES", 0)
    big = run(), run(anti=True)
    assert small == big
    assert small[0] == [(i, i / 1000) for i in range(250, 300)] and small[1] == list(range(300, 400))


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_heldout_sources_form_the_out_of_domain_sample_and_never_train(tmp_path, pairs, ray_shared):
    """Two sources, one held out: its rows never train, its sample's English is no training
    English, the sample is the first N English per language in hash order, and the student's rows
    carry it as ``split == heldout``."""
    import pyarrow.parquet as pq
    import ray

    from mdistill.config import load_config
    from mdistill.stages.cache_pass import add_keys
    from mdistill.stages.corpus import build_corpus
    from mdistill.stages.select import select_data

    half = len(pairs) // 2
    inside, outside = tmp_path / "inside.parquet", tmp_path / "outside.parquet"
    pq.write_table(pa.Table.from_pandas(pairs.iloc[:half], preserve_index=False), inside)
    shifted = pairs.iloc[half:].assign(en=lambda d: d.en + " again")  # other English than the inside source
    pq.write_table(pa.Table.from_pandas(pd_concat(shifted, pairs.iloc[:20]), preserve_index=False), outside)  # + 20 shared with inside
    cfg = load_config(
        None,
        [
            f"corpus.sources=[{{format: parquet, name: inside, paths: [{inside}]}}, {{format: parquet, name: outside, paths: [{outside}]}}]",
            "corpus.langs=[de, fr]",
            "corpus.dev_fraction=0.2",
            "corpus.train_fraction=1.0",
            "corpus.heldout_sources=[outside]",
        ],
    )
    corpus = build_corpus(cfg.corpus, tmp_path / "cache")
    data = select_data(corpus, cfg.corpus.langs, 20, 15)

    df = pq.read_table(corpus.pairs).to_pandas()
    df = df[df.variant == 0]
    train = df[df.split == "train"]
    assert set(train.source) == {"inside"} and set(df[df.split == "heldout"].source) == {"outside"}
    assert set(df[df.split == "dev"].source) == {"inside"}
    assert data.counts.train_pairs == train.groupby("lang").size().to_dict()
    held = data.heldout.to_pandas()
    assert set(held.en).isdisjoint(set(train.en)) and len(held)
    assert data.counts.heldout_pairs == held.groupby("lang").size().to_dict()
    # the sample: per language, the 15 English sources first in hash order
    ref = add_keys(pa.Table.from_pandas(df[df.split == "heldout"][["en", "lang", "text"]], preserve_index=False), columns=("en",))
    ref = ref.to_pandas().sort_values(["lang", "en_key"]).groupby("lang").head(15)
    assert sorted(map(tuple, held[["en", "lang", "text"]].values)) == sorted(map(tuple, ref[["en", "lang", "text"]].values))

    rows = pa.concat_tables(ray.get(data.rows().to_arrow_refs())).to_pandas()
    assert len(rows) == data.counts.student_rows
    h = rows[rows.split == "heldout"]
    assert len(h[h.lang != "en"]) == len(held) and sorted(h[h.lang == "en"].text) == sorted(held.en.unique())
    assert set(rows[rows.split == "train"].en).isdisjoint(set(held.en))


def pd_concat(*frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)
