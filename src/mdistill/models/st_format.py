"""The sentence-transformers directory format: write one (using sentence-transformers itself), and read
what a run needs from one without loading its weights."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path


def default_prompt_of(model_dir: str | Path) -> str:
    """The default prompt a sentence-transformers directory declares (e5: "query: "), read
    without loading the weights."""
    f = Path(model_dir) / "config_sentence_transformers.json"
    if not f.is_file():
        return ""
    meta = json.loads(f.read_text())
    name = meta.get("default_prompt_name")
    return (meta.get("prompts") or {}).get(name, "") if name else ""


def num_layers(model_dir: str | Path) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir)).num_hidden_layers


def write_sentence_transformer(out_dir: str | Path, hf_model, tokenizer, *, max_seq_length: int, prompt: str = "") -> Path:
    """Transformer -> mean Pooling -> Normalize, with ``prompt`` as the default prompt.

    ``SentenceTransformer(out_dir)`` then applies the prompt itself, so its ``encode`` gives the
    same vectors as mdistill's own encoder.
    """
    from sentence_transformers import SentenceTransformer, models

    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as hf_dir:
        hf_model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        tr = models.Transformer(hf_dir, max_seq_length=max_seq_length)
        pool = models.Pooling(tr.get_word_embedding_dimension(), pooling_mode="mean")
        prompts = {"query": prompt} if prompt else None
        st = SentenceTransformer(
            modules=[tr, pool, models.Normalize()], prompts=prompts, default_prompt_name="query" if prompt else None, device="cpu"
        )
        if out.exists():
            shutil.rmtree(out)
        st.save(str(out))
    return out
