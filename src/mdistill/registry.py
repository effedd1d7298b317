"""A versioned model registry on a filesystem, with a promotion gate (no Ray).

Layout::

    <root>/<name>/v0001/            the model files (a sentence-transformers directory) + entry.json
    <root>/<name>/v0002/
    <root>/<name>/latest -> v0001   the promoted version (a relative symlink)
    <root>/<name>/latest.json       the same alias as a file, for filesystems without symlinks

``register`` copies a model into the next version (to a hidden temp folder, then one ``rename``:
a crash mid-copy leaves no half version, only a ``.tmp-*`` folder that listings ignore) and
applies the gate: the new version becomes ``latest`` iff there is no current one, or its key
metric is >= the current one's minus ``tolerance`` (mode ``max``; ``min``: <= current + tolerance).
Periodic re-distillation uses this so a worse model is kept for inspection but never served.
A lock file per name serialises concurrent registrations.

Example::

    reg = ModelRegistry("models")
    reg.register("e5-de-fr", "runs/default/model", {"teacher_space_top1": 0.91}, key_metric="teacher_space_top1", tolerance=0.005)
    reg.latest("e5-de-fr")["version"]  # 'v0001'
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mdistill.config import RegistryConfig

VERSION_RE = re.compile(r"^v(\d{4,})$")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)  # atomic: readers see the old or the new file, never half


def gate(candidate: float | None, current: float | None, *, tolerance: float = 0.0, mode: str = "max") -> tuple[bool, str]:
    """Promote iff no current value, or candidate >= current - tolerance (max) / <= current + tolerance (min)."""
    if candidate is None:
        return False, "candidate has no value for the key metric"
    if current is None:
        return True, "no current latest"
    if mode == "max":
        ok = candidate >= current - tolerance
        return ok, f"{candidate:.6g} {'>=' if ok else '<'} current {current:.6g} - tolerance {tolerance:g}"
    if mode == "min":
        ok = candidate <= current + tolerance
        return ok, f"{candidate:.6g} {'<=' if ok else '>'} current {current:.6g} + tolerance {tolerance:g}"
    raise ValueError(f"mode must be max or min, not {mode!r}")


class ModelRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    # -- reading -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and self.versions(p.name))

    def _version_dirs(self, name: str) -> list[Path]:
        d = self.root / name
        if not d.is_dir():
            return []
        # only completed versions: a hidden temp folder left by a crash has no vNNNN name
        dirs = [p for p in d.iterdir() if VERSION_RE.match(p.name) and not p.is_symlink() and (p / "entry.json").is_file()]
        return sorted(dirs, key=lambda p: int(VERSION_RE.match(p.name).group(1)))

    def versions(self, name: str) -> list[dict]:
        """``entry.json`` of every version, oldest first (``latest``: whether it is the promoted one)."""
        cur = self._latest_version(name)
        return [{**json.loads((p / "entry.json").read_text()), "latest": p.name == cur} for p in self._version_dirs(name)]

    def _latest_version(self, name: str) -> str | None:
        d = self.root / name
        link, meta = d / "latest", d / "latest.json"
        if meta.is_file():  # written last when promoting, so the source of truth
            v = json.loads(meta.read_text()).get("version")
        elif link.is_symlink():
            v = os.readlink(link).rstrip("/").split("/")[-1]
        else:
            return None
        return v if v and (d / v / "entry.json").is_file() else None

    def latest(self, name: str) -> dict | None:
        """The promoted version's entry (with its ``path``), or ``None``."""
        v = self._latest_version(name)
        return self.show(name, v) if v else None

    def show(self, name: str, version: str | None = None) -> dict:
        """One version's entry (``None``: the latest); raises ``KeyError`` if absent."""
        version = version or self._latest_version(name)
        p = self.root / name / (version or "")
        if not version or not (p / "entry.json").is_file():
            raise KeyError(f"no version {version or 'latest'} of model {name!r} in {self.root}")
        return {**json.loads((p / "entry.json").read_text()), "latest": version == self._latest_version(name)}

    # -- writing -------------------------------------------------------------------------------
    @contextmanager
    def _lock(self, name: str):
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield d
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _set_latest(self, d: Path, version: str) -> None:
        tmp = d / f".latest.{uuid.uuid4().hex[:8]}"
        try:
            os.symlink(version, tmp, target_is_directory=True)
            os.replace(tmp, d / "latest")  # swap the alias in one step
        except OSError:  # no symlinks here: latest.json alone carries the alias
            tmp.unlink(missing_ok=True)
        _write_json(d / "latest.json", {"version": version, "promoted": _now()})

    def register(
        self,
        name: str,
        model_dir: str | Path,
        metrics: dict,
        *,
        key_metric: str,
        tolerance: float = 0.0,
        mode: str = "max",
        info: dict | None = None,
    ) -> dict:
        """Copy ``model_dir`` into the next version, record it, promote it if it passes the gate.

        Returns ``{"name", "version", "promoted", "reason", "candidate", "current", "path"}``."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"model name {name!r}: letters, digits, '.', '_', '-' only")
        if key_metric not in metrics:
            raise KeyError(f"key metric {key_metric!r} not in metrics {sorted(metrics)}")
        src = Path(model_dir)
        if not src.is_dir():
            raise FileNotFoundError(f"model directory {src} not found")
        with self._lock(name) as d:
            existing = [int(VERSION_RE.match(p.name).group(1)) for p in d.iterdir() if VERSION_RE.match(p.name)]
            version = f"v{max(existing, default=0) + 1:04d}"
            cur_v = self._latest_version(name)
            current = self.show(name, cur_v)["metrics"].get(key_metric) if cur_v else None
            candidate = metrics[key_metric]
            promoted, reason = gate(candidate, current, tolerance=tolerance, mode=mode)
            if cur_v and current is None and candidate is not None:
                promoted, reason = True, f"current latest {cur_v} has no {key_metric}"
            entry = {
                "name": name,
                "version": version,
                "created": _now(),
                "metrics": metrics,
                "key_metric": key_metric,
                "info": info or {},
                "promoted": promoted,
                "gate": {
                    "mode": mode,
                    "tolerance": tolerance,
                    "candidate": candidate,
                    "current": current,
                    "current_version": cur_v,
                    "reason": reason,
                },
                "source": str(src.resolve()),
            }
            tmp = d / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
            try:
                shutil.copytree(src, tmp, symlinks=False)
                _write_json(tmp / "entry.json", entry)
                os.rename(tmp, d / version)  # the version appears complete, or not at all
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if promoted:
                self._set_latest(d, version)
        return dict(
            name=name, version=version, promoted=promoted, reason=reason, candidate=candidate, current=current, path=str(d / version)
        )

    def promote(self, name: str, version: str, *, force: bool = False, tolerance: float = 0.0) -> dict:
        """Make ``version`` the latest: through the gate (its key metric vs the current latest's,
        the mode it was registered with) unless ``force``. Same return shape as ``register``."""
        with self._lock(name) as d:
            entry = self.show(name, version)
            key, mode = entry["key_metric"], entry.get("gate", {}).get("mode", "max")
            cur_v = self._latest_version(name)
            candidate = entry["metrics"].get(key)
            current = self.show(name, cur_v)["metrics"].get(key) if cur_v and cur_v != version else None
            if cur_v == version:
                promoted, reason = True, "already latest"
            elif force:
                promoted, reason = True, "forced"
            else:
                promoted, reason = gate(candidate, current, tolerance=tolerance, mode=mode)
            if promoted and cur_v != version:
                self._set_latest(d, version)
                _write_json(
                    d / version / "entry.json",
                    {**{k: v for k, v in entry.items() if k != "latest"}, "promoted": True, "promoted_manually": _now()},
                )
        return dict(
            name=name, version=version, promoted=promoted, reason=reason, candidate=candidate, current=current, path=str(d / version)
        )


def register_run(run_dir: str | Path, cfg: RegistryConfig, name: str | None = None) -> dict:
    """Register a finished run's exported student (``<run_dir>/report.json``, a ``RunReport``).

    ``name``: which student of the report (default: the first); the registry name is ``cfg.name``
    or the run's name. Metrics = the student's mean over languages (the report's ``summary``)."""
    from mdistill.report.schema import load_report

    run_dir = Path(run_dir)
    report = load_report(run_dir)
    if not report.students:
        raise KeyError(f"{run_dir / 'report.json'} lists no trained student")
    student = name or next(iter(report.students))
    if student not in report.students:
        raise KeyError(f"student {student!r} not in the report (have {sorted(report.students)})")
    summary = report.summary.get(student)
    if summary is None:
        raise KeyError(f"no summary metrics for {student!r} in {run_dir / 'report.json'}")
    model_dir = Path(report.students[student].export.path)
    if not model_dir.is_dir():  # a run folder moved since: the export's place relative to it
        moved = run_dir / ("model" if len(report.students) == 1 else f"models/{student}")
        model_dir = moved if moved.is_dir() else model_dir
    info = {
        "run_dir": str(run_dir.resolve()),
        "run": report.name,
        "student": student,
        "teacher": (report.config.get("teacher") or {}).get("model"),
        "finished": report.finished,
        "per_language": {lang: row.models[student].model_dump() for lang, row in report.metrics.items() if student in row.models},
    }
    reg_name = cfg.name or report.name or run_dir.name
    return ModelRegistry(cfg.root).register(
        reg_name, model_dir, summary.model_dump(), key_metric=cfg.key_metric, tolerance=cfg.tolerance, mode=cfg.mode, info=info
    )
