"""Shared fixtures: tiny random-init sentence-transformers models and a small real corpus."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_pairs() -> pd.DataFrame:
    """Real en->de/fr pairs from LibreOffice help (MPL-2.0), a few hundred rows."""
    return pd.read_csv(FIXTURES / "libreoffice_de_fr.tsv", sep="\t", keep_default_na=False, quoting=3)


def make_tiny_model(out: Path, texts: list[str], *, layers: int = 2, hidden: int = 32, prompt: str = "", seed: int = 0) -> Path:
    """A random-init BERT with a WordPiece vocabulary trained on ``texts``, saved as a
    sentence-transformers directory (mean pooling + normalize)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from mdistill.models.st_format import write_sentence_transformer

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    return write_sentence_transformer(out, BertModel(cfg, add_pooling_layer=False), fast, max_seq_length=64, prompt=prompt)


@pytest.fixture(scope="module")
def ray_shared():
    """A local Ray instance (2 CPUs) shared by a module's in-process integration tests (the stages
    accept an initialised Ray as it is). Per module, not per session: an idle instance left running
    would slow the tests that start their own (a driver to kill, a job to submit) on 2 cores."""
    yield from _local_ray(include_dashboard=False)


@pytest.fixture(scope="module")
def ray_shared_tune():
    """``ray_shared`` with the dashboard, for modules that run Tune over Train: Train V2 frees a
    finished trial's worker placement group through the State API the dashboard serves; without
    it the group keeps its CPU and the next trial's Ray Data read waits forever (../shared/STACK.md)."""
    yield from _local_ray(include_dashboard=True)


def _local_ray(include_dashboard: bool):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=include_dashboard)  # never a cluster left on this host
    yield
    ray.shutdown()


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_running(request):
    """A module that leaves Ray initialised in the pytest process makes every later ``ray.init``
    fail ("called ray.init twice") and loses its instance to the next ``ray stop``: shut it down
    here and fail that module, not the innocent ones after it."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail(f"{request.module.__name__} left Ray initialised: use the ray_shared fixture or shut it down")


def terminal_line(config, text: str) -> None:
    """A line on the terminal even while pytest captures output (``make test`` shows it)."""
    reporter, capture = (config.pluginmanager.get_plugin(p) for p in ("terminalreporter", "capturemanager"))
    if reporter is None or capture is None:
        print(text)
        return
    with capture.global_and_fixture_disabled():  # fd-level capture would swallow it
        reporter.write_line(text)


@pytest.fixture
def show(request):
    """``show(...)``: what a test measured (node ids, counts), printed in the test output."""
    return lambda *parts: terminal_line(request.config, f"  [{request.node.name}] " + " ".join(str(p) for p in parts))


@pytest.fixture(scope="session")
def pairs() -> pd.DataFrame:
    return fixture_pairs()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, pairs) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    texts = list(pairs.en) + list(pairs.text)
    return {
        "teacher": make_tiny_model(root / "teacher", texts, layers=2, hidden=32, seed=1),
        "student": make_tiny_model(root / "student", texts, layers=3, hidden=32, prompt="query: ", seed=2),
    }


def teacher_pass(cfg, texts: list[str], cache_dir: Path, *, block_rows: int = 1024, commit_rows: int = 4096):
    """The recipe's teacher stage (``pipelines/run.py``, step 2) on a list of texts: returns the
    teacher cache and the pass's ``CachePass``."""
    import ray

    from mdistill.stages import cache_pass
    from mdistill.stages.teacher import open_teacher

    teacher = open_teacher(cfg, cache_dir)
    with teacher.cache.lock():
        # no selection fingerprint: every call plans from the cache's keys (the tests change the texts)
        texts_once = cache_pass.Distinct(ray.data.from_items([{"text": t} for t in texts]), len(texts))
        todo = cache_pass.plan(teacher.cache, texts_once, None, block_rows=block_rows)
        vectors = todo.rows.map_batches(teacher.predictor, **teacher.pool_args(ray.nodes())) if todo.rows else None
        return teacher.cache, cache_pass.commit(todo, vectors, commit_rows=commit_rows)


def tiny_run_overrides(tmp_path: Path, tiny_models: dict[str, Path], rows: list[dict]) -> list[str]:
    """Config overrides of a tiny end-to-end run: ``rows`` (en, lang, text) as a Parquet source,
    de + fr, the tiny random-init teacher and student, caches and outputs under ``tmp_path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(rows), corpus)
    return [
        f"corpus.sources=[{{format: parquet, paths: [{corpus}]}}]",
        "corpus.langs=[de, fr]",
        "corpus.dev_fraction=0.25",
        "corpus.train_fraction=1.0",
        f"teacher.model={tiny_models['teacher']}",
        f"student.model={tiny_models['student']}",
        "train.batch_size=16",
        f"cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path / 'run'}",
    ]
