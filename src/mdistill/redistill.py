"""Periodic re-distillation (``mdistill schedule CONFIG``, recipe ``pipelines/schedule.py``): the
``Scheduler`` and what it fingerprints. One tick, top to bottom:

1. a run in flight? reconcile it with the job backend (Ray Jobs API or a local subprocess):
   an "intent" whose job the backend does not know is submitted now, under the id recorded
   before the crash (so never twice); a finished job is registered with the model registry's
   gate (SUCCEEDED: every student of its report) or recorded and retried with backoff (FAILED);
   a succeeded run not registered yet (registry unreachable, ...) is retried on every tick;
2. a failed run with retries left and its backoff over? submit the next attempt;
3. a schedule time due (cron or interval; any number of missed times count as one) or forced?
4. a ``format: debian`` source? ask the archive for the versions of its packages and DDTP
   Translation files (private apt lists, ``mdistill.corpus.upstream``); a changed or new one
   refreshes that part of the cache and is a trigger. A failed check (no network, no apt) is a
   warning: the tick decides on the cached versions, as before the check existed;
   then fingerprint the corpus inputs, the teacher and the run settings; unchanged since the last
   finished run, no upstream change and not forced: record the tick and stop;
5. record the run's intent (deterministic submission id) -> submit -> record it submitted.
   The teacher cache makes the new run pay only for new sentences.

State (``<state_dir>/state.json``) is written before and after every submission, so a restart
never submits twice and never drops a due tick; a state file that does not parse stops the
scheduler (``StateError``), never a silent fresh start. Time and the backend are injectable (tests).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from mdistill.config import RunConfig
from mdistill.scheduler import (
    Clock,
    JobBackend,
    LocalProcessBackend,
    RayJobsBackend,
    StateError,
    StateStore,
    SystemClock,
    due_fire,
    next_fire,
    utc,
)

IN_FLIGHT = ("intent", "submitted")
FINAL = ("done", "failed")
# The job SUCCEEDED but not every student is in the registry yet: retried each tick. It does not
# hold back the schedule, and its fingerprints are the baseline (its job need not run again).
REGISTER_PENDING = "register_pending"
FINISHED = (*FINAL, REGISTER_PENDING)
MAX_TICK_LOG = 200
MAX_REASON_CHANGES = 5  # upstream changes named in a run's reason (all of them are in run["upstream"])


def fingerprints(cfg: RunConfig) -> dict[str, str]:
    """What a re-distillation depends on: the corpus inputs (file sizes/mtimes, or Debian package
    versions) with the cleaning settings, the teacher's files and settings, and the rest of the run
    settings. Reuses the fingerprints of the corpus build and of the teacher cache."""
    from mdistill.assets import resolve_model
    from mdistill.stages.corpus import corpus_fingerprint, plan
    from mdistill.stages.teacher import local_model_dir, teacher_settings
    from mdistill.teacher.cache import model_fingerprint

    _, identity = plan(cfg.corpus, cfg.cache_path)
    teacher_dir = local_model_dir(resolve_model(cfg.teacher.model, cfg.cache_path))
    teacher = model_fingerprint(teacher_dir, **teacher_settings(cfg.teacher))  # what the teacher cache is keyed by
    settings = cfg.model_dump(exclude={"corpus", "teacher", "schedule", "job", "ray", "tracking", "output_dir", "cache_dir"})
    return {
        "corpus": corpus_fingerprint(cfg.corpus, identity),
        "teacher": teacher,
        "settings": hashlib.blake2b(json.dumps(settings, sort_keys=True, default=str).encode(), digest_size=16).hexdigest(),
    }


def debian_upstream(cfg: RunConfig, apt_dir: Path, log: Callable[[str], None]) -> dict | None:
    """The upstream check of the config's ``format: debian`` sources (``corpus.upstream.check_upstream``):
    None without one; never raises (a failed check is ``ok: False`` with the reason)."""
    from mdistill.corpus.upstream import check_upstream

    return check_upstream(cfg.corpus.sources, cfg.corpus.langs, cfg.cache_path, apt_dir, log)


def upstream_event(up: dict) -> dict:
    """The upstream check as a tick reports it (``schedule --once`` prints it): changes as log lines."""
    from mdistill.corpus.upstream import describe

    return {"ok": up["ok"], "error": up["error"], "changes": [describe(c) for c in up["changes"]], "refreshed": up["refreshed"]}


def upstream_summary(up: dict | None, pending: list[dict]) -> str:
    """The upstream changes a run is for and what the check could not do, for the tick log and a
    run's reason ("" when nothing to say)."""
    from mdistill.corpus.upstream import describe

    said = []
    if pending:
        lines = [describe(c) for c in pending]
        more = len(lines) - MAX_REASON_CHANGES
        said.append("upstream: " + "; ".join(lines[:MAX_REASON_CHANGES]) + (f"; +{more} more" if more > 0 else ""))
    if up is not None and not up["ok"]:
        said.append(f"upstream check failed: {up['error']}")
    if up is not None:
        said += [f"{part} not refreshed: {why}" for part, why in up["refresh_errors"].items()]
    return "; ".join(said)


def default_backend(cfg: RunConfig, state_dir: Path) -> JobBackend:
    """The cluster's Jobs API when an address is configured, else local subprocesses."""
    address = cfg.schedule.address or cfg.job.address
    if address:
        return RayJobsBackend(cfg.job, address)
    return LocalProcessBackend(state_dir / "jobs", cwd=Path(cfg.job.working_dir).expanduser().resolve(), env=cfg.job.env_vars)


class Scheduler:
    def __init__(
        self,
        cfg: RunConfig,
        config_path: str | Path,
        overrides: list[str] | None = None,
        *,
        backend: JobBackend | None = None,
        clock: Clock | None = None,
        state_dir: str | Path | None = None,
        make_entrypoint: Callable[[str, Path], str] | None = None,
        fingerprint: Callable[[RunConfig], dict[str, str]] = fingerprints,
        upstream: Callable[[RunConfig, Path, Callable[[str], None]], dict | None] = debian_upstream,
        log: Callable[[str], None] = lambda m: print(f"[mdistill schedule] {m}", flush=True),
    ):
        if cfg.schedule is None:
            raise ValueError("the config has no schedule: section (cron or interval_s)")
        self.cfg, self.schedule = cfg, cfg.schedule
        self.config_path, self.overrides = Path(config_path), list(overrides or [])
        self.store = StateStore(Path(state_dir or self.schedule.state_dir.format(name=cfg.name)).expanduser().resolve())
        self.runs_dir = Path(self.schedule.runs_dir.format(name=cfg.name)).expanduser().resolve()
        self.backend = backend or default_backend(cfg, self.store.dir)
        self.clock = clock or SystemClock()
        self.make_entrypoint = make_entrypoint or self.run_entrypoint
        self.fingerprint, self.upstream, self.log = fingerprint, upstream, log

    def run_entrypoint(self, run_id: str, run_dir: Path) -> str:
        """``mdistill run CONFIG overrides output_dir=<runs_dir>/<run_id>``: each run has its own directory."""
        from mdistill.jobs import config_for_job, run_entrypoint

        return run_entrypoint(config_for_job(self.config_path, self.cfg.job), [*self.overrides, f"output_dir={run_dir}"], self.cfg.job)

    # -- one tick ---------------------------------------------------------------------------------

    def tick(self, *, force: bool = False, new_runs: bool = True, fire_now: bool = False) -> dict:
        """One scheduling step (see the module docstring). Returns what it did: {"action": ...}.
        ``fire_now``: this call is itself a schedule time (an external scheduler, e.g. a CronJob, calls it);
        ``new_runs=False``: only follow the current run and its retries."""
        with self.store.lock():
            state = self.store.load()
            now = self.clock.now()
            self.register_pending(state, now)
            run = state["runs"][-1] if state["runs"] else None

            # 1. a run in flight: bring its record up to date; never start another meanwhile
            if run and run["status"] in IN_FLIGHT:
                self._reconcile(state, run, now)
                if run["status"] in IN_FLIGHT:
                    return {"action": "waiting", "run": run["run_id"], "status": run.get("job_status")}

            # 2. a failed attempt with retries left
            if run and run["status"] == "retry_wait":
                if now < run["retry_at"]:
                    return {"action": "retry_pending", "run": run["run_id"], "retry_at": run["retry_at"]}
                run["attempt"] += 1
                self._submit(state, run, now)
                return {"action": "retried", "run": run["run_id"], "attempt": run["attempt"]}
            if not new_runs:
                return {"action": "finished", "run": run and run["run_id"], "status": run and run["status"]}

            # 3. a schedule time due, or forced
            force = force or self.schedule.force
            fire = now if fire_now else due_fire(self.schedule, state["last_fire"], now)
            if fire is None and not force:
                return {"action": "idle", "next_fire": next_fire(self.schedule, state["last_fire"])}

            # 4. anything changed since the last finished run? First upstream: a new Debian package
            # version or DDTP update refreshes its cached part (before fingerprinting, so the run reads it)
            up = self.upstream(self.cfg, self.store.dir / "apt", self.log)
            seen = {}  # what the tick reports of the check
            if up is not None:
                state["upstream"] = {"at": utc(now), **up}
                seen = {"upstream": upstream_event(up)}
                if up["applied"]:  # the cache holds them now: kept as a trigger until a run is recorded for them
                    state["upstream_pending"] = [*state.get("upstream_pending", []), *up["applied"]]
                    self.store.save(state)
            pending = state.get("upstream_pending", [])
            fps = self.fingerprint(self.cfg)
            last = next((r for r in reversed(state["runs"]) if r["status"] in FINISHED), None)
            changed = sorted(k for k in fps if last is None or last["fingerprints"].get(k) != fps[k])
            if pending:
                changed = sorted({*changed, "upstream"})  # a trigger of its own, whatever the fingerprints say
            if fire is not None:
                state["last_fire"] = fire  # saved together with the run's intent below, or alone
            summary = upstream_summary(up, pending)
            if not changed and not force:
                self._log_tick(state, now, fire, "; ".join([f"unchanged since {last['run_id']}"] + [summary] * bool(summary)))
                self.store.save(state)
                self.log(f"tick {utc(now)}: nothing changed since {last['run_id']} ({last['status']}); no job")
                return {"action": "unchanged", "since": last["run_id"], **seen}

            # 5. intent -> submit -> submitted
            n = len(state["runs"]) + 1
            run_id = f"{self.cfg.name}-{n:04d}-{utc(fire if fire is not None else now).replace(':', '').replace('-', '')}"
            reason = " ".join(["forced"] * force + [f"changed: {','.join(changed)}"] * bool(changed))
            reason += f" ({summary})" if summary else ""
            run = {
                "run_id": run_id,
                "reason": reason,
                "fingerprints": fps,
                "upstream": pending,  # the package/index versions this run is for, old -> new
                "fire": fire,
                "created": now,
                "output_dir": str(self.runs_dir / run_id),
                "attempt": 1,
                "attempts": [],
            }
            state["runs"].append(run)
            state["upstream_pending"] = []  # now the run's (saved with its intent)
            self._log_tick(state, now, fire, f"submit {run_id}: {run['reason']}")
            self.log(f"tick {utc(now)}: {run['reason']} -> run {run_id}")
            self._submit(state, run, now)
            return {"action": "submitted", "run": run_id, "reason": run["reason"], **seen}

    def _submit(self, state: dict, run: dict, now: float) -> None:
        """Record the intent (the id) durably, then submit under that id, then record it submitted.
        A crash between the two writes leaves an intent that _reconcile() resolves by asking the backend."""
        run["status"] = "intent"
        run["submission_id"] = f"mdistill-{run['run_id']}-a{run['attempt']}"
        self.store.save(state)
        self._submit_intent(state, run, now)

    def _submit_intent(self, state: dict, run: dict, now: float) -> None:
        entrypoint = self.make_entrypoint(run["run_id"], Path(run["output_dir"]))
        meta = {"mdistill_run": run["run_id"], "attempt": str(run["attempt"])}
        try:
            self.backend.submit(run["submission_id"], entrypoint, meta)
        except Exception as e:  # e.g. the cluster is unreachable: the intent stays, the next tick tries again
            run["error"] = f"submit: {type(e).__name__}: {e}"
            self.store.save(state)
            raise
        run.update(status="submitted", job_status="PENDING", submitted_at=now, error=None)
        self.store.save(state)
        self.log(f"submitted {run['submission_id']} (attempt {run['attempt']})")

    def _reconcile(self, state: dict, run: dict, now: float) -> None:
        sid = run["submission_id"]
        status = self.backend.status(sid)
        if run["status"] == "intent":
            if status is None:  # crashed before the backend saw it: submit under the same id
                self._submit_intent(state, run, now)
                return
            run.update(status="submitted", job_status=status, submitted_at=run.get("submitted_at") or now)
            self.log(f"{sid} was submitted before the restart ({status}); not submitting again")
        if status is None:
            status = "FAILED"  # the cluster no longer knows the job (e.g. it was restarted)
            run["error"] = "job unknown to the backend"
        if status not in ("SUCCEEDED", "FAILED", "STOPPED"):
            run["job_status"] = status
            if now - run["submitted_at"] > self.cfg.job.timeout_s:
                self.backend.stop(sid)
                status, run["error"] = "FAILED", f"timed out after {self.cfg.job.timeout_s:.0f} s"
            else:
                self.store.save(state)
                return
        run["attempts"].append({"submission_id": sid, "status": status, "submitted_at": run["submitted_at"], "finished_at": now})
        run["job_status"], run["finished_at"] = status, now
        if status == "SUCCEEDED":
            self._register(run, now)
        elif status == "FAILED" and run["attempt"] <= self.schedule.max_retries:
            run["status"] = "retry_wait"
            run["retry_at"] = now + self.schedule.retry_backoff_s * 2 ** (run["attempt"] - 1)
            self.log(f"{sid} FAILED; retry {run['attempt']}/{self.schedule.max_retries} at {utc(run['retry_at'])}")
        else:  # retries exhausted, or STOPPED by someone: not retried
            run["status"] = "failed"
            self.log(f"{sid} {status}; run {run['run_id']} failed after {run['attempt']} attempt(s)")
        self.store.save(state)

    def register_pending(self, state: dict, now: float) -> None:
        """Try again to register every run whose job succeeded but whose students are not all in
        the registry (oldest first); saved whatever the outcome, so the error of each try is kept."""
        pending = [r for r in state["runs"] if r["status"] == REGISTER_PENDING]
        for run in pending:
            self._register(run, now)
        if pending:
            self.store.save(state)

    def _register(self, run: dict, now: float) -> None:
        """The run's report -> the registry, every student (``<name>-<student>`` when several):
        each promoted only if it passes its gate. Until all are registered the run stays
        ``register_pending`` with the error, and the next tick tries the missing ones again."""
        from mdistill.registry import register_run_students

        run["status"] = REGISTER_PENDING
        run["register_attempts"] = run.get("register_attempts", 0) + 1
        done = run.get("registry") or {}
        try:
            results, errors = register_run_students(run["output_dir"], self.cfg.registry, done)
        except Exception as e:  # no usable report (yet): the whole run waits for the next tick
            results, errors = done, {"report": f"{type(e).__name__}: {e}"}
        run["registry"] = results  # student -> the registry's answer
        if errors:
            run.update(outcome="register_error", error="; ".join(f"{k}: {v}" for k, v in errors.items()), register_failed_at=now)
            self.log(
                f"run {run['run_id']} succeeded but could not be registered (try {run['register_attempts']}, "
                f"retried next tick): {run['error']}"
            )
            return
        promoted = [r.get("promoted") for r in results.values()]
        outcome = "promoted" if all(promoted) else "not_promoted" if not any(promoted) else "partly_promoted"
        run.update(status="done", outcome=outcome, error=None)
        for r in results.values():
            self.log(
                f"run {run['run_id']}: {r.get('name')} {r.get('version')} {'promoted' if r.get('promoted') else 'not promoted'} ({r.get('reason')})"
            )

    @staticmethod
    def _log_tick(state: dict, now: float, fire: float | None, what: str) -> None:
        state.setdefault("ticks", []).append({"at": utc(now), "fire": fire and utc(fire), "what": what})
        del state["ticks"][:-MAX_TICK_LOG]

    # -- drivers ----------------------------------------------------------------------------------

    def state(self) -> dict:
        return self.store.load()

    def run_once(self, *, force: bool = False) -> dict:
        """One tick that counts as a schedule time, then follow its run (and its retries) to the end:
        what a CronJob calls (the CronJob's schedule decides when; this decides whether)."""
        event = self.tick(force=force, fire_now=True)
        while True:
            run = (self.state()["runs"] or [None])[-1]
            if run and run["status"] in IN_FLIGHT:
                self.clock.sleep(self.schedule.poll_s)
            elif run and run["status"] == "retry_wait":
                self.clock.sleep(max(0.0, run["retry_at"] - self.clock.now()))
            else:
                return {**event, "final": run and {k: run.get(k) for k in ("run_id", "status", "outcome", "job_status")}}
            self.tick(new_runs=False)

    def run_forever(self) -> None:
        """Tick every ``poll_s``; an error (cluster unreachable, ...) is logged and retried next tick,
        but not a corrupt state file: no later tick could read it either (``StateError`` stops)."""
        while True:
            try:
                self.tick()
            except StateError:
                raise
            except Exception as e:
                self.log(f"tick failed: {type(e).__name__}: {e}")
            self.clock.sleep(self.schedule.poll_s)
