"""Parts of ``mdistill schedule`` (one tick is ``redistill.Scheduler.tick``):

- ``Clock``: ``now()`` / ``sleep()``, injectable so tests control time;
- job backends with one interface: ``RayJobsBackend`` (a cluster's Jobs API) and
  ``LocalProcessBackend`` (the same entrypoint as a local subprocess, no cluster needed);
- ``StateStore``: the scheduler's state as JSON, replaced atomically, so a restart sees exactly
  what was decided and submitted; a file that does not parse is copied aside and stops the
  scheduler (``StateError``): starting over could submit a run again and forget the one in flight;
- ``due_fire``: which schedule time is due (at most one, however many were missed).

Nothing here imports Ray at module level.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from mdistill.config import JobConfig, ScheduleConfig

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class Clock(Protocol):
    def now(self) -> float: ...  # seconds since the epoch (UTC)
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


# -- schedule -----------------------------------------------------------------------------------


def next_fire(schedule: ScheduleConfig, after: float) -> float:
    """The first schedule time strictly after ``after``."""
    if schedule.interval_s is not None:
        return after + schedule.interval_s
    from croniter import croniter

    return croniter(schedule.cron, datetime.fromtimestamp(after, timezone.utc)).get_next(float)


def due_fire(schedule: ScheduleConfig, last_fire: float | None, now: float) -> float | None:
    """The latest schedule time in (last_fire, now], or None if none is due. Missed times collapse
    into one (catch-up policy: one run for any number of missed ticks). With no previous fire (first
    start), ``now`` is due: the first tick establishes the baseline run."""
    if last_fire is None:
        return now
    fire = next_fire(schedule, last_fire)
    if fire > now:
        return None
    if schedule.interval_s is not None:
        return last_fire + schedule.interval_s * ((now - last_fire) // schedule.interval_s)
    from croniter import croniter

    latest = croniter(schedule.cron, datetime.fromtimestamp(now, timezone.utc)).get_prev(float)
    return now if next_fire(schedule, latest) <= now else max(fire, latest)  # `now` itself may be a fire time


# -- job backends --------------------------------------------------------------------------------


class JobBackend(Protocol):
    """Submits a shell command under a caller-chosen id. ``status`` of an id never submitted is None:
    that is how a restarted scheduler tells "intent recorded, never submitted" from "submitted"."""

    def submit(self, submission_id: str, entrypoint: str, metadata: dict[str, str]) -> str: ...
    def status(self, submission_id: str) -> str | None: ...  # PENDING/RUNNING/SUCCEEDED/FAILED/STOPPED
    def logs(self, submission_id: str) -> str: ...
    def stop(self, submission_id: str) -> None: ...


class RayJobsBackend:
    """A Ray cluster's Jobs API: ``JobSubmissionClient.submit_job(submission_id=...)`` refuses an id
    that already exists, so an id can never run twice."""

    def __init__(self, job_cfg: JobConfig, address: str | None = None):
        self.job_cfg, self.address = job_cfg, address or job_cfg.address

    def submit(self, submission_id: str, entrypoint: str, metadata: dict[str, str]) -> str:
        from mdistill import jobs

        return jobs.submit_entrypoint(entrypoint, self.job_cfg, address=self.address, submission_id=submission_id, metadata=metadata)

    def status(self, submission_id: str) -> str | None:
        from mdistill import jobs

        try:
            return jobs.job_status(submission_id, self.address)
        except RuntimeError as e:
            if "404" in str(e) or "does not exist" in str(e):
                return None
            raise

    def logs(self, submission_id: str) -> str:
        from mdistill import jobs

        return jobs.job_logs(submission_id, self.address)

    def stop(self, submission_id: str) -> None:
        from mdistill import jobs

        jobs.stop_job(submission_id, self.address)


class LocalProcessBackend:
    """Runs the entrypoint as a local subprocess (``sh -c``), in its own session. Everything about a
    job lives in ``<root>/<id>/`` (pid, log, exit code), so a new backend object (a restarted
    scheduler) still knows every job, and an id that exists is never started again."""

    def __init__(self, root: str | Path, *, cwd: str | Path | None = None, env: dict[str, str] | None = None):
        self.root = Path(root)
        self.cwd = str(cwd) if cwd else None
        self.env = env or {}
        self._procs: dict[str, subprocess.Popen] = {}  # reaped by status(), so no zombie looks alive

    def submit(self, submission_id: str, entrypoint: str, metadata: dict[str, str]) -> str:
        d = self.root / submission_id
        d.mkdir(parents=True, exist_ok=False)  # FileExistsError: that id was submitted already
        (d / "job.json").write_text(json.dumps({"entrypoint": entrypoint, "metadata": metadata, "submitted": time.time()}))
        # the shell writes the exit code atomically when the command ends, whoever is watching
        # (a subshell, so an `exit` in the entrypoint still reaches the line that records it)
        tmp_rc, rc = shlex.quote(str(d / "rc.tmp")), shlex.quote(str(d / "rc"))
        wrapped = f"(\n{entrypoint}\n)\nrc=$?; echo $rc > {tmp_rc} && mv {tmp_rc} {rc}"
        with open(d / "log.txt", "wb") as log:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", wrapped],
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs[submission_id] = proc
        import psutil

        (d / "pid").write_text(f"{proc.pid} {psutil.Process(proc.pid).create_time()}")
        return submission_id

    def status(self, submission_id: str) -> str | None:
        d = self.root / submission_id
        if not d.is_dir():
            return None
        if submission_id in self._procs:
            self._procs[submission_id].poll()
        if (d / "rc").exists():
            return "SUCCEEDED" if (d / "rc").read_text().strip() == "0" else "FAILED"
        if (d / "stopped").exists():
            return "STOPPED"
        if not (d / "pid").exists():
            return "PENDING"  # between mkdir and Popen
        if self._alive(d):
            return "RUNNING"
        return "FAILED"  # gone without an exit code: killed (e.g. the machine restarted)

    @staticmethod
    def _alive(d: Path) -> bool:
        import psutil

        pid, created = (d / "pid").read_text().split()
        try:
            p = psutil.Process(int(pid))
            return abs(p.create_time() - float(created)) < 1 and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def logs(self, submission_id: str) -> str:
        return (self.root / submission_id / "log.txt").read_text(errors="replace")

    def stop(self, submission_id: str) -> None:
        d = self.root / submission_id
        (d / "stopped").touch()
        if (d / "pid").exists() and self._alive(d):
            os.killpg(int((d / "pid").read_text().split()[0]), signal.SIGTERM)


# -- state ---------------------------------------------------------------------------------------


class StateError(RuntimeError):
    """``state.json`` exists but is not a scheduler state: the message names it and its backup copy."""


def _state_problem(state: object) -> str | None:
    """What makes parsed JSON unusable as the scheduler's state, or None."""
    if not isinstance(state, dict):
        return f"not a scheduler state: a JSON {type(state).__name__}, not an object"
    if not isinstance(state.get("runs"), list) or "last_fire" not in state:
        return "not a scheduler state: no runs list or last_fire"
    for i, run in enumerate(state["runs"]):
        if not isinstance(run, dict) or not {"run_id", "status"} <= run.keys():
            return f"not a scheduler state: runs[{i}] is not a run (run_id, status)"
    return None


class StateStore:
    """``<state_dir>/state.json``: {"last_fire", "runs": [...]}; every write is temp file + fsync +
    os.replace, so a crash leaves the old or the new state, never half of one. ``lock()`` keeps two
    schedulers from acting on the same state at once."""

    def __init__(self, state_dir: str | Path):
        self.dir = Path(state_dir)
        self.path = self.dir / "state.json"

    def load(self) -> dict:
        """The state; none yet: a fresh one. A file that is not a scheduler state raises
        ``StateError`` after copying it to ``state.json.corrupt-<UTC time>`` (the file itself stays,
        so every later start stops too until someone fixes, restores or deletes it)."""
        if not self.path.exists():
            return {"version": 1, "last_fire": None, "runs": []}
        raw = self.path.read_bytes()
        try:
            state = json.loads(raw.decode("utf-8"))  # save() writes ASCII JSON
            problem = _state_problem(state)
        except UnicodeDecodeError as e:
            problem = f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        except json.JSONDecodeError as e:
            problem = f"corrupt JSON at line {e.lineno} column {e.colno}: {e.msg}"
        if problem is None:
            return state
        backup = self._backup(raw)
        raise StateError(
            f"{self.path}: {problem}; copied to {backup}. The scheduler stops rather than start over, which could "
            f"submit a run again and forget the one in flight: repair {self.path.name} (or restore it from a backup) "
            f"and start again, or delete it to start over deliberately"
        )

    def _backup(self, raw: bytes) -> Path:
        """A copy of the unreadable state, once per distinct content (a CronJob retrying hourly adds no copies)."""
        for old in sorted(self.dir.glob(f"{self.path.name}.corrupt-*")):
            if old.read_bytes() == raw:
                return old
        backup = self.dir / f"{self.path.name}.corrupt-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}"
        backup.write_bytes(raw)  # the bytes that failed, even if the file changes meanwhile
        return backup

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"another scheduler holds {self.dir / 'lock'}") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
