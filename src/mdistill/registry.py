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
A candidate whose key metric is not a finite number (NaN, inf) is never promoted; a current
latest whose metric is not finite cannot be compared, so it does not block a finite candidate.
A folder without ``modules.json`` is not a complete sentence-transformers model: refused.
A lock file per name serialises concurrent registrations.

Names and versions are path components: every entry point checks them (``mdistill.names``) and
that the folder they name resolves inside the root, so nothing is read or written outside it.

Example::

    reg = ModelRegistry("models")
    reg.register("e5-de-fr", "runs/default/model", {"teacher_space_top1": 0.91}, key_metric="teacher_space_top1", tolerance=0.005)
    reg.latest("e5-de-fr")["version"]  # 'v0001'
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from mdistill.names import check_name, inside

if TYPE_CHECKING:
    from mdistill.config import RegistryConfig

VERSION_RE = re.compile(r"^v(\d{4,})$")


class RegistryError(ValueError):
    """A bad name or version, an incomplete model, or an unreadable registry file (named in the message)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)  # atomic: readers see the old or the new file, never half


def _read_json(path: Path) -> dict:
    """A registry file (entry.json, latest.json) as a dict; corrupt: ``RegistryError`` naming it."""
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RegistryError(f"{path}: corrupt JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RegistryError(f"{path}: cannot read: {e}") from None
    if not isinstance(obj, dict):
        raise RegistryError(f"{path}: corrupt: expected a JSON object, got {type(obj).__name__}")
    return obj


def _check_version(version: object, name: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise RegistryError(f"version {version!r} of model {name!r} is not a version: expected v0001, v0002, ...")
    return version


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def gate(
    candidate: float | None,
    current: float | None,
    *,
    tolerance: float = 0.0,
    mode: str = "max",
    current_version: str | None = None,
) -> tuple[bool, str]:
    """Promote iff no current value, or candidate >= current - tolerance (max) / <= current + tolerance (min).

    A candidate that is not a finite number is refused (NaN compares false with everything, so a
    NaN latest would otherwise block every later version); a current value that is not finite is
    not comparable, so a finite candidate passes, and the reason says so."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, not {mode!r}")
    if candidate is None:
        return False, "candidate has no value for the key metric"
    if not _finite(candidate):
        return False, f"candidate's key metric is {candidate!r}, not a finite number: never promoted"
    cur = f"current latest {current_version}" if current_version else "current latest"
    if current is None:
        return True, f"{cur} has no value for the key metric" if current_version else "no current latest"
    if not _finite(current):
        return True, f"{cur}'s key metric is {current!r}, not a finite number: not comparable, the finite candidate is promoted"
    if mode == "max":
        ok = candidate >= current - tolerance
        return ok, f"{candidate:.6g} {'>=' if ok else '<'} current {current:.6g} - tolerance {tolerance:g}"
    if mode == "min":
        ok = candidate <= current + tolerance
        return ok, f"{candidate:.6g} {'<=' if ok else '>'} current {current:.6g} + tolerance {tolerance:g}"
    raise AssertionError(mode)  # checked above


def _check_complete(model_dir: Path) -> None:
    """A sentence-transformers folder lists its modules in modules.json; without it nothing can load it."""
    if not (model_dir / "modules.json").is_file():
        raise RegistryError(f"{model_dir}: incomplete model (no modules.json): not a sentence-transformers model folder")


class ModelRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    # -- reading -------------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        """``<root>/<name>`` once ``name`` is a valid name whose folder resolves inside the root."""
        try:
            return inside(self.root, self.root / check_name(name, "model name"), f"model {name!r}")
        except ValueError as e:
            raise RegistryError(str(e)) from None

    def _vdir(self, name: str, version: str) -> Path:
        d = self._dir(name)
        try:
            return inside(d, d / _check_version(version, name), f"model {name!r} version {version!r}")
        except ValueError as e:
            raise RegistryError(str(e)) from None

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        # folders that are no valid name (or symlinks out of the root) are not the registry's
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and self._valid(p.name) and self.versions(p.name)
        )

    @staticmethod
    def _valid(name: str) -> bool:
        try:
            check_name(name)
        except ValueError:
            return False
        return True

    def _version_dirs(self, name: str) -> list[Path]:
        d = self._dir(name)
        if not d.is_dir():
            return []
        # only completed versions: a hidden temp folder left by a crash has no vNNNN name
        dirs = [p for p in d.iterdir() if VERSION_RE.match(p.name) and not p.is_symlink() and (p / "entry.json").is_file()]
        return sorted(dirs, key=lambda p: int(VERSION_RE.match(p.name).group(1)))

    def versions(self, name: str) -> list[dict]:
        """``entry.json`` of every version, oldest first (``latest``: whether it is the promoted one)."""
        cur = self._latest_version(name)
        return [{**_read_json(p / "entry.json"), "latest": p.name == cur} for p in self._version_dirs(name)]

    def _latest_version(self, name: str) -> str | None:
        d = self._dir(name)
        link, meta = d / "latest", d / "latest.json"
        if meta.is_file():  # written last when promoting, so the source of truth
            v, where = _read_json(meta).get("version"), meta
        elif link.is_symlink():
            v, where = os.readlink(link).rstrip("/"), link
        else:
            return None
        if v is None:
            return None
        if not isinstance(v, str) or not VERSION_RE.fullmatch(v):  # never follow an alias out of the name's folder
            raise RegistryError(f"{where}: corrupt alias: {v!r} is not a version (v0001, ...)")
        return v if (d / v / "entry.json").is_file() else None

    def latest(self, name: str) -> dict | None:
        """The promoted version's entry (with its ``path``), or ``None``."""
        v = self._latest_version(name)
        return self.show(name, v) if v else None

    def show(self, name: str, version: str | None = None) -> dict:
        """One version's entry (``None``: the latest); raises ``KeyError`` if absent."""
        version = version or self._latest_version(name)
        if not version:
            raise KeyError(f"no version latest of model {name!r} in {self.root}")
        p = self._vdir(name, version)
        if not (p / "entry.json").is_file():
            raise KeyError(f"no version {version} of model {name!r} in {self.root}")
        return {**_read_json(p / "entry.json"), "latest": version == self._latest_version(name)}

    # -- writing -------------------------------------------------------------------------------
    @contextmanager
    def _lock(self, name: str, *, create: bool = True):
        d = self._dir(name)  # checked before anything is created
        if not create and not d.is_dir():
            raise KeyError(f"no model {name!r} in {self.root}")
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
        self._dir(name)
        if key_metric not in metrics:
            raise KeyError(f"key metric {key_metric!r} not in metrics {sorted(metrics)}")
        src = Path(model_dir)
        if not src.is_dir():
            raise FileNotFoundError(f"model directory {src} not found")
        _check_complete(src)
        with self._lock(name) as d:
            existing = [int(VERSION_RE.match(p.name).group(1)) for p in d.iterdir() if VERSION_RE.match(p.name)]
            version = f"v{max(existing, default=0) + 1:04d}"
            cur_v = self._latest_version(name)
            current = self.show(name, cur_v)["metrics"].get(key_metric) if cur_v else None
            candidate = metrics[key_metric]
            promoted, reason = gate(candidate, current, tolerance=tolerance, mode=mode, current_version=cur_v)
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
        the mode it was registered with) unless ``force``. Same return shape as ``register``.
        ``force`` skips the metric gate, not the completeness check: a folder without
        ``modules.json`` is never made latest."""
        self._vdir(name, version)  # before the lock: it creates the name's folder
        with self._lock(name, create=False) as d:
            entry = self.show(name, version)
            _check_complete(d / version)
            key, mode = entry["key_metric"], entry.get("gate", {}).get("mode", "max")
            cur_v = self._latest_version(name)
            candidate = entry["metrics"].get(key)
            other = cur_v if cur_v != version else None
            current = self.show(name, other)["metrics"].get(key) if other else None
            if cur_v == version:
                promoted, reason = True, "already latest"
            elif force:
                promoted, reason = True, "forced"
            else:
                promoted, reason = gate(candidate, current, tolerance=tolerance, mode=mode, current_version=other)
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
    or the run's name. Metrics = the student's mean over languages on the held-out split when the run
    has one (``heldout_summary``: the same sentences for every version trained on other data),
    else on the dev split (``summary``)."""
    from mdistill.report.schema import load_report

    run_dir = Path(run_dir)
    report = load_report(run_dir)
    if not report.students:
        raise KeyError(f"{run_dir / 'report.json'} lists no trained student")
    student = name or next(iter(report.students))
    if student not in report.students:
        raise KeyError(f"student {student!r} not in the report (have {sorted(report.students)})")
    split, summaries = report.headline()  # held-out (out-of-domain) when the run holds sources out
    summary = summaries.get(student)
    if summary is None:
        raise KeyError(f"no summary metrics for {student!r} in {run_dir / 'report.json'}")
    table = report.heldout_metrics if split == "heldout" else report.metrics
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
        "eval_split": split,
        "per_language": {lang: row.models[student].model_dump() for lang, row in table.items() if student in row.models},
    }
    reg_name = cfg.name or report.name or run_dir.name
    return ModelRegistry(cfg.root).register(
        reg_name, model_dir, summary.model_dump(), key_metric=cfg.key_metric, tolerance=cfg.tolerance, mode=cfg.mode, info=info
    )


def student_registry_names(base: str, students: list[str]) -> dict[str, str]:
    """Registry name per student of a run: ``base`` for a lone student, ``<base>-<student>`` for
    several (each has its own versions and gate: two students are not two versions of one model)."""
    return {s: base if len(students) == 1 else f"{base}-{s}" for s in students}


def _registered_from(reg: ModelRegistry, name: str, run_dir: Path, student: str, finished: str) -> dict | None:
    """The version that this run (folder + finish time) already registered for ``student``, as
    ``register`` returns it: a scheduler that died before recording a result does not add it twice."""
    for e in reversed(reg.versions(name)):
        info = e.get("info") or {}
        if (info.get("run_dir"), info.get("student"), info.get("finished")) == (str(run_dir.resolve()), student, finished):
            gate_ = e.get("gate") or {}
            return dict(
                name=name,
                version=e["version"],
                promoted=bool(e.get("promoted")),
                reason=f"already registered from this run ({gate_.get('reason')})",
                candidate=gate_.get("candidate"),
                current=gate_.get("current"),
                path=str(reg._dir(name) / e["version"]),
            )
    return None


def register_run_students(
    run_dir: str | Path, cfg: RegistryConfig, done: dict[str, dict] | None = None
) -> tuple[dict[str, dict], dict[str, str]]:
    """Register every student of a finished run (``register_run`` each, under
    ``student_registry_names(cfg.name or the run's name)``). ``done``: students an earlier call
    registered (kept as they are). A student this run already registered (found in the registry's
    entries) is not registered again. Returns ``(results, errors)`` by student: one student that
    fails (its export missing, ...) does not keep the others out. An unreadable report raises."""
    from mdistill.report.schema import load_report

    run_dir = Path(run_dir)
    report = load_report(run_dir)
    if not report.students:
        raise KeyError(f"{run_dir / 'report.json'} lists no trained student")
    names = student_registry_names(cfg.name or report.name or run_dir.name, list(report.students))
    results, errors = dict(done or {}), {}
    for student, name in names.items():
        if student in results:
            continue
        try:
            reg = ModelRegistry(cfg.root)
            results[student] = _registered_from(reg, name, run_dir, student, report.finished) or register_run(
                run_dir, cfg.model_copy(update={"name": name}), student
            )
        except Exception as e:  # any failure is this student's, recorded by the caller and retried
            errors[student] = f"{type(e).__name__}: {e}"
    return results, errors
