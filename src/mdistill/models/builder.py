"""Student builders: from a packaged offline model, any Hugging Face id or a local path, then
optionally layer pruning (``student.keep_layers``) and vocabulary trimming
(``student.trim_vocab``). Built students are cached by what they were built from, so a re-run
reuses them and a changed corpus or layer list builds anew."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from mdistill.assets import resolve_model
from mdistill.config import StudentConfig


def _key(source: str, **settings) -> str:
    from mdistill.teacher.cache import model_fingerprint

    if Path(source).is_dir():
        return model_fingerprint(source, **settings)[:20]
    h = hashlib.blake2b(json.dumps({"id": source, **settings}, sort_keys=True, default=str).encode(), digest_size=10)
    return h.hexdigest()


def _build_once(out: Path, build) -> dict | None:
    """Run ``build(tmp_dir)`` unless ``out`` exists; publish atomically (no half-built student)."""
    if (out / "mdistill_build.json").exists():
        return json.loads((out / "mdistill_build.json").read_text())
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    info = build(tmp)
    (tmp / "mdistill_build.json").write_text(json.dumps(info, default=str))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


def build_student(
    student: StudentConfig, cache_dir: Path, *, used_ids: Callable[[str, str], set[int]] | None = None, corpus_key: str | None = None
) -> dict:
    """``{"path": a sentence-transformers directory, "steps": [what was done, with counts]}``.

    ``used_ids(model_dir, prompt)``: the tokenizer ids the training corpus uses (vocabulary
    trimming); ``corpus_key``: what identifies that corpus (a trimmed student is cached by it)."""
    from mdistill.models.prune_layers import prune_layers
    from mdistill.models.trim_vocab import trim_vocabulary

    path = resolve_model(student.model, cache_dir)
    steps: list[dict] = [{"step": "load", "model": student.model, "path": path}]
    root = cache_dir / "students"
    root.mkdir(parents=True, exist_ok=True)
    if student.keep_layers is not None:
        out = root / f"pruned-{_key(path, keep_layers=student.keep_layers)}"
        info = _build_once(out, lambda tmp: prune_layers(path, student.keep_layers, tmp))
        steps.append({"step": "prune_layers", **info})
        path = str(out)
    if student.trim_vocab:
        if used_ids is None or corpus_key is None:
            raise ValueError("student.trim_vocab needs the corpus (used_ids and corpus_key)")
        from mdistill.models.st_format import default_prompt_of

        prompt = default_prompt_of(path) if student.prompt is None else student.prompt
        out = root / f"trimmed-{_key(path, corpus=corpus_key, prompt=prompt)}"
        src = path
        info = _build_once(out, lambda tmp: trim_vocabulary(src, tmp, used_ids=used_ids(src, prompt)))
        steps.append({"step": "trim_vocab", **info})
        path = str(out)
    return {"path": path, "steps": steps}
