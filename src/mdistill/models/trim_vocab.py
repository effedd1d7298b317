"""Vocabulary trimming: keep only the tokenizer pieces a corpus uses (and the special tokens).

A multilingual student carries a vocabulary for ~100 languages: multilingual-e5-small has 96M of
its 118M parameters in the embedding matrix, while a 4-language corpus uses ~39k of its 250k
pieces. Dropping the unused rows shrinks the model without changing any output for text the
kept pieces cover. That holds because tokenisation only ever picks pieces from the vocabulary:
- Unigram (XLM-R, e5): the best segmentation under the full vocabulary uses only kept pieces, so
  it is still available and still the best under the subset.
- WordPiece (BERT): greedy longest match picks the same piece, since no longer piece can appear
  in a subset.
The tokenizer's ids and the embedding rows are remapped together. BPE vocabularies are refused:
their merges would have to be trimmed too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def used_token_ids(tokenizer, texts: Iterable[str], batch: int = 4096) -> set[int]:
    """Every id the tokenizer produces for ``texts`` (no truncation: all of each text counts)."""
    used: set[int] = set()
    buf: list[str] = []
    for t in texts:
        buf.append(t)
        if len(buf) >= batch:
            used.update(i for ids in tokenizer(buf, add_special_tokens=True)["input_ids"] for i in ids)
            buf = []
    if buf:
        used.update(i for ids in tokenizer(buf, add_special_tokens=True)["input_ids"] for i in ids)
    return used


def _remap_special_ids(node, remap: dict[int, int]):
    """Post-processor JSON: TemplateProcessing ``special_tokens[*].ids``, Bert/Roberta ``cls``/``sep`` pairs."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "ids" and isinstance(v, list):
                out[k] = [remap[i] for i in v]
            elif k in ("cls", "sep") and isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                out[k] = [v[0], remap[v[1]]]
            else:
                out[k] = _remap_special_ids(v, remap)
        return out
    if isinstance(node, list):
        return [_remap_special_ids(x, remap) for x in node]
    return node


def trim_vocabulary(
    model_dir: str | Path, out_dir: str | Path, *, texts: Iterable[str] | None = None, used_ids: set[int] | None = None
) -> dict:
    """Write a copy of a sentence-transformers model with only the pieces ``texts`` use (or the
    ids ``used_ids``, counted elsewhere, e.g. on Ray Data); returns vocabulary sizes and
    parameter counts before and after."""
    if (texts is None) == (used_ids is None):
        raise ValueError("give texts or used_ids")
    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    st = SentenceTransformer(str(model_dir), device="cpu")
    tok = st.tokenizer
    params_before = sum(p.numel() for p in st.parameters())
    spec = json.loads(tok.backend_tokenizer.to_str())
    kind = spec["model"]["type"]
    if kind not in ("Unigram", "WordPiece"):
        raise ValueError(f"vocabulary trimming supports Unigram and WordPiece tokenizers, not {kind}")

    used = used_token_ids(tok, texts) if texts is not None else set(used_ids)
    keep = sorted(used | set(tok.all_special_ids) | {a["id"] for a in spec.get("added_tokens", [])})
    remap = {old: new for new, old in enumerate(keep)}
    if kind == "Unigram":
        spec["model"]["vocab"] = [spec["model"]["vocab"][i] for i in keep]
        if spec["model"].get("unk_id") is not None:
            spec["model"]["unk_id"] = remap[spec["model"]["unk_id"]]
    else:
        spec["model"]["vocab"] = {piece: remap[i] for piece, i in spec["model"]["vocab"].items() if i in remap}
    for a in spec.get("added_tokens", []):
        a["id"] = remap[a["id"]]
    spec["post_processor"] = _remap_special_ids(spec.get("post_processor"), remap)

    new_tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        model_max_length=tok.model_max_length,
        **{k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)},
    )
    hf = st[0].auto_model
    old = hf.get_input_embeddings()
    pad = hf.config.pad_token_id
    new = torch.nn.Embedding(len(keep), old.weight.shape[1], padding_idx=remap.get(pad) if pad is not None else None)
    new.weight.data.copy_(old.weight.data[torch.tensor(keep)])
    hf.set_input_embeddings(new)
    hf.config.vocab_size = len(keep)
    if pad is not None:
        hf.config.pad_token_id = remap[pad]
    module = st[0]
    if isinstance(type(module).__dict__.get("tokenizer"), property):  # sentence-transformers >= 6: the processor
        module.processor = new_tok
    else:
        module.tokenizer = new_tok
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    st.save(str(out_dir))
    return {
        "tokenizer": kind,
        "vocab_before": len(tok),
        "vocab_after": len(keep),
        "params_before": params_before,
        "params_after": sum(p.numel() for p in st.parameters()),
    }
