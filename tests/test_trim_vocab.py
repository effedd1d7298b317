"""Vocabulary trimming keeps every output for covered text (WordPiece and Unigram tokenizers)."""

import numpy as np
import pytest

from mdistill.encode import encode_batch, load_sentence_transformer
from mdistill.models.trim_vocab import trim_vocabulary

from conftest import make_tiny_model


def _unigram_model(out, texts):
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from mdistill.models.st_format import write_sentence_transformer

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(
        texts, trainers.UnigramTrainer(vocab_size=1500, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>")
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", model_max_length=128
    )
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, pad_token_id=1
    )
    return write_sentence_transformer(out, BertModel(cfg, add_pooling_layer=False), fast, max_seq_length=64)


@pytest.mark.parametrize("kind", ["WordPiece", "Unigram"])
def test_trimmed_model_gives_the_same_vectors_for_covered_text(tmp_path, pairs, kind):
    all_texts = list(pairs.en) + list(pairs.text)
    src = make_tiny_model(tmp_path / "src", all_texts) if kind == "WordPiece" else _unigram_model(tmp_path / "src", all_texts)
    corpus = list(pairs.text[:60]) + list(pairs.en[:60])  # a small corpus: few pieces used
    info = trim_vocabulary(src, tmp_path / "trimmed", texts=corpus)
    assert info["tokenizer"] == kind
    assert info["vocab_after"] < info["vocab_before"] and info["params_after"] < info["params_before"]

    full = load_sentence_transformer(str(src), device="cpu")
    small = load_sentence_transformer(str(tmp_path / "trimmed"), device="cpu")
    a, b = encode_batch(full, corpus, prompt=""), encode_batch(small, corpus, prompt="")
    assert np.abs(a - b).max() < 1e-5
    assert small.tokenizer(corpus[:3])["input_ids"] != full.tokenizer(corpus[:3])["input_ids"]  # really remapped


def test_cli_trims_with_a_corpus_folder(tmp_path, pairs, ray_shared):  # the corpus is read by Ray Data
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from mdistill.cli import app

    src = make_tiny_model(tmp_path / "src", list(pairs.en) + list(pairs.text))
    (tmp_path / "corpus" / "pairs").mkdir(parents=True)
    pq.write_table(
        pa.table({"en": list(pairs.en[:30]), "text": list(pairs.text[:30])}), tmp_path / "corpus" / "pairs" / "part-00000.parquet"
    )
    r = CliRunner().invoke(app, ["trim-vocab", str(src), str(tmp_path / "corpus"), str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "WordPiece vocabulary" in r.output and (tmp_path / "out" / "modules.json").exists()
