"""Write a model in the sentence-transformers directory format, using sentence-transformers itself."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


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
