"""Periodic re-distillation (pipelines/redistill.py) with a controllable clock and real local
subprocesses (LocalProcessBackend) running tests/fake_distill.py, a cheap stand-in for `mdistill
run` that writes a run directory (exported tiny model + report.json with a chosen metric). No Ray.

Covered: ticks without changes submit nothing; a corpus change submits exactly one job; a restart
after a submission (also a crash between "intent recorded" and "submitted") submits nothing again;
a failed job is recorded and retried per policy; a worse student is registered, not promoted; a
tick missed while the scheduler was down runs once on restart; a new upstream Debian version (the
check itself is tests/test_upstream_versions.py) submits a run named in the state and the tick's
report, and a failed check falls back to the fingerprints."""

from __future__ import annotations

import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mdistill.config import ScheduleConfig, load_config
from mdistill.redistill import Scheduler
from mdistill.registry import ModelRegistry
from mdistill.scheduler import LocalProcessBackend, due_fire

REPO = Path(__file__).resolve().parents[1]
FAKE_RUN = REPO / "tests" / "fake_distill.py"
HOUR = 3600.0
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()


class FakeClock:
    """Scheduler time is ours; the local jobs run in real time, so sleep() also waits a little."""

    def __init__(self, t: float = T0):
        self.t = t

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        time.sleep(0.05)


class Crash(BaseException):
    """A process dying mid-tick (BaseException: nothing in the scheduler catches it)."""


class Env:
    """A config (TSV corpus, tiny teacher, hourly schedule) and the knobs of the fake runs."""

    def __init__(self, tmp: Path, tiny_models: dict[str, Path], pairs, **schedule):
        self.tmp, self.student = tmp, tiny_models["student"]
        self.tsv = tmp / "corpus.de.tsv"
        self.tsv.write_text("".join(f"{en}\t{de}\n" for en, de in zip(pairs.en[:50], pairs.text[:50])))
        sched = {"interval_s": HOUR, "max_retries": 2, "retry_backoff_s": 60, "poll_s": 5} | schedule
        self.cfg = load_config(
            None,
            [
                "name=tiny",
                f"corpus.sources=[{{format: tsv, paths: [{self.tsv}], lang: de}}]",
                "corpus.langs=[de]",
                f"teacher.model={tiny_models['teacher']}",
                f"cache_dir={tmp / 'cache'}",
                f"registry.root={tmp / 'models'}",
                "registry.tolerance=0.0",
                *[f"schedule.{k}={v}" for k, v in sched.items()],
                f"schedule.state_dir={tmp / 'state'}",
                f"schedule.runs_dir={tmp / 'runs'}",
            ],
        )
        self.clock = FakeClock()
        self.metric = 0.5
        self.fail_next = 0  # this many submissions run a command that exits 3
        self.students: list[str] = ["student"]  # the students the fake run trains

    def entrypoint(self, run_id: str, run_dir: Path) -> str:
        if self.fail_next > 0:
            self.fail_next -= 1
            return f"echo 'simulated failure of {run_id}'; exit 3"
        return shlex.join(
            [sys.executable, str(FAKE_RUN), str(self.student), str(run_dir), str(self.metric), "tiny", ",".join(self.students)]
        )

    def backend(self) -> LocalProcessBackend:
        return LocalProcessBackend(self.tmp / "state" / "jobs", cwd=REPO)

    def scheduler(self, backend=None, **kw) -> Scheduler:
        """A new scheduler object on the same state dir: what a restart gives."""
        return Scheduler(
            self.cfg,
            REPO / "configs" / "tiny.yaml",
            backend=backend or self.backend(),
            clock=self.clock,
            make_entrypoint=self.entrypoint,
            log=print,
            **kw,
        )

    def jobs(self) -> list[str]:
        d = self.tmp / "state" / "jobs"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []

    def change_corpus(self) -> None:
        with self.tsv.open("a") as f:
            f.write("A brand new sentence for the corpus\tEin ganz neuer Satz für das Korpus\n")


@pytest.fixture
def env(tmp_path, tiny_models, pairs) -> Env:
    return Env(tmp_path, tiny_models, pairs)


def follow(s: Scheduler) -> dict:
    """Tick (no new runs) until the current run is finished."""
    for _ in range(400):
        run = s.state()["runs"][-1]
        if run["status"] in ("done", "failed"):
            return run
        s.clock.sleep(s.schedule.poll_s)
        s.tick(new_runs=False)
    raise AssertionError(f"run did not finish: {run}")


def test_ticks_without_changes_submit_nothing_and_a_change_submits_one(env):
    s = env.scheduler()
    assert s.tick()["action"] == "submitted"  # first start: the baseline run
    assert follow(s)["outcome"] == "promoted"
    assert len(env.jobs()) == 1

    for _ in range(2):  # two scheduled ticks, nothing changed
        env.clock.t += HOUR
        assert s.tick()["action"] == "unchanged"
    assert len(env.jobs()) == 1
    assert s.tick()["action"] == "idle"  # between schedule times nothing is even fingerprinted

    env.change_corpus()
    env.clock.t += HOUR
    ev = s.tick()
    assert ev["action"] == "submitted" and "corpus" in ev["reason"] and "teacher" not in ev["reason"]
    assert len(env.jobs()) == 1 + 1
    follow(s)
    env.clock.t += HOUR
    assert s.tick()["action"] == "unchanged"  # the change is now the baseline
    assert len(env.jobs()) == 2
    assert [r["status"] for r in s.state()["runs"]] == ["done", "done"]


def test_restart_after_submission_does_not_submit_again(env):
    s = env.scheduler()
    assert s.tick()["action"] == "submitted"
    # restart while the job may still run: the new scheduler follows it, submits nothing
    s2 = env.scheduler()
    assert s2.tick()["action"] in ("waiting", "unchanged", "idle")
    run = follow(s2)
    assert run["status"] == "done" and len(env.jobs()) == 1
    assert s2.tick()["action"] == "idle"
    assert len(env.jobs()) == 1


def test_crash_after_submit_before_recording_it(env):
    """The job reached the backend but the "submitted" write never happened."""
    backend = env.backend()
    real_submit = backend.submit

    def submit_then_die(*a, **k):
        real_submit(*a, **k)
        raise Crash

    backend.submit = submit_then_die
    with pytest.raises(Crash):
        env.scheduler(backend).tick()
    assert env.scheduler().state()["runs"][-1]["status"] == "intent"

    s = env.scheduler()  # restart
    s.tick()
    run = follow(s)
    assert run["status"] == "done" and run["attempt"] == 1
    assert env.jobs() == [run["submission_id"]]  # exactly one job, under the recorded id


def test_crash_after_intent_before_submit(env):
    """The intent was recorded, the process died before the backend saw the job."""
    backend = env.backend()

    def die(*a, **k):
        raise Crash

    backend.submit = die
    with pytest.raises(Crash):
        env.scheduler(backend).tick()
    assert env.jobs() == []
    intent = env.scheduler().state()["runs"][-1]
    assert intent["status"] == "intent"

    s = env.scheduler()  # restart: the intent is submitted under its id, once
    s.tick()
    run = follow(s)
    assert run["status"] == "done" and env.jobs() == [intent["submission_id"]]
    s.tick()
    assert len(env.jobs()) == 1


def test_failed_job_is_recorded_and_retried_per_policy(tmp_path, tiny_models, pairs):
    env = Env(tmp_path, tiny_models, pairs, max_retries=1, retry_backoff_s=600)
    env.fail_next = 5  # every attempt fails
    s = env.scheduler()
    assert s.tick()["action"] == "submitted"
    while s.state()["runs"][-1]["status"] == "submitted":
        env.clock.sleep(1)
        s.tick()
    run = s.state()["runs"][-1]
    assert run["status"] == "retry_wait" and run["attempts"][0]["status"] == "FAILED"
    assert run["retry_at"] == pytest.approx(run["attempts"][0]["finished_at"] + 600)

    env.clock.t += 60
    assert s.tick()["action"] == "retry_pending"  # backoff not over: nothing submitted
    assert len(env.jobs()) == 1
    env.clock.t = run["retry_at"]
    assert s.tick()["action"] == "retried"
    run = follow(s)
    assert run["status"] == "failed"  # 1 retry allowed: 2 attempts, then given up
    assert [a["status"] for a in run["attempts"]] == ["FAILED", "FAILED"]
    assert env.jobs() == [f"mdistill-{run['run_id']}-a1", f"mdistill-{run['run_id']}-a2"]
    assert "simulated failure" in s.backend.logs(run["submission_id"])

    # nothing changed since the failed run: the next tick does not resubmit it...
    env.clock.t += HOUR
    assert s.tick()["action"] == "unchanged" and len(env.jobs()) == 2
    # ...and a retry that succeeds ends the run well
    env.fail_next = 1
    env.clock.t += HOUR
    assert s.run_once(force=True)["final"]["status"] == "done"
    assert [a["status"] for a in s.state()["runs"][-1]["attempts"]] == ["FAILED", "SUCCEEDED"]


def test_worse_student_is_registered_but_not_promoted(env):
    s = env.scheduler()
    reg = ModelRegistry(env.tmp / "models")
    env.metric = 0.80
    assert s.run_once()["final"]["outcome"] == "promoted"
    env.metric = 0.50  # worse
    env.clock.t += HOUR
    assert s.run_once(force=True)["final"]["outcome"] == "not_promoted"
    assert [v["version"] for v in reg.versions("tiny")] == ["v0001", "v0002"]  # registered...
    assert reg.latest("tiny")["version"] == "v0001"  # ...not served
    env.metric = 0.90  # better
    env.clock.t += HOUR
    assert s.run_once(force=True)["final"]["outcome"] == "promoted"
    assert reg.latest("tiny")["version"] == "v0003"
    assert s.state()["runs"][1]["registry"]["student"]["promoted"] is False  # per student of the run


def test_missed_ticks_run_once_on_restart(env):
    s = env.scheduler()
    s.tick()
    follow(s)
    first_fire = s.state()["last_fire"]
    # the scheduler is down for 5.5 hours; meanwhile the corpus changes
    env.change_corpus()
    env.clock.t += 5.5 * HOUR
    s2 = env.scheduler()
    assert s2.tick()["action"] == "submitted"  # the missed ticks: one run, not lost
    assert s2.state()["last_fire"] == first_fire + 5 * HOUR
    follow(s2)
    assert s2.tick()["action"] == "idle"  # and not five runs
    assert len(env.jobs()) == 2


def test_default_entrypoint_runs_mdistill_with_its_own_output_dir(env):
    s = Scheduler(env.cfg, REPO / "configs" / "tiny.yaml", ["train.epochs=1"], backend=env.backend(), clock=env.clock)
    cmd = s.run_entrypoint("tiny-0001-x", env.tmp / "runs" / "tiny-0001-x")
    assert shlex.split(cmd) == ["mdistill", "run", "configs/tiny.yaml", "train.epochs=1", f"output_dir={env.tmp / 'runs' / 'tiny-0001-x'}"]


def test_due_fire_cron_collapses_missed_times():
    sched = ScheduleConfig(cron="0 * * * *")
    assert due_fire(sched, None, T0 + 10) == T0 + 10  # first start
    assert due_fire(sched, T0, T0 + 0.5 * HOUR) is None
    assert due_fire(sched, T0, T0 + HOUR) == T0 + HOUR  # exactly on time
    assert due_fire(sched, T0, T0 + 5.5 * HOUR) == T0 + 5 * HOUR  # five missed: one, the latest
    interval = ScheduleConfig(interval_s=HOUR)
    assert due_fire(interval, T0, T0 + 5.5 * HOUR) == T0 + 5 * HOUR


def test_state_survives_and_lock_excludes_a_second_scheduler(env):
    s = env.scheduler()
    with s.store.lock(), pytest.raises(RuntimeError, match="another scheduler"):
        env.scheduler().tick()
    assert not (env.tmp / "state" / "state.json").exists() or os.path.getsize(env.tmp / "state" / "state.json") > 0


def test_schedule_command_needs_a_schedule_section():
    from typer.testing import CliRunner

    from mdistill.cli import app

    r = CliRunner().invoke(app, ["schedule", str(REPO / "configs" / "tiny.yaml"), "--once"])
    assert r.exit_code == 2 and "schedule" in r.output


def test_a_name_that_escapes_is_rejected_before_any_state_or_job(tmp_path, monkeypatch):
    """`name` reaches the state dir, the runs dir and every job id: validated with the config."""
    from typer.testing import CliRunner

    from mdistill.cli import app

    def reached(*a, **k):  # without the check the real scheduler would run jobs (with real backoff)
        raise AssertionError("a scheduler was built for an invalid name")

    monkeypatch.setattr(Scheduler, "__init__", reached)
    args = ["schedule", str(REPO / "configs" / "tiny.yaml"), "name=../../escape", "schedule.interval_s=3600", "--once"]
    args += [f"schedule.state_dir={tmp_path}/{{name}}/state", f"schedule.runs_dir={tmp_path}/{{name}}/runs"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "name '../../escape' is not a valid name" in r.output, r.output
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent.parent / "escape").exists()


def finish_job(s: Scheduler) -> dict:
    """Tick (no new runs) until the current run's job has ended (registered or not)."""
    for _ in range(400):
        run = s.state()["runs"][-1]
        if run["status"] not in ("intent", "submitted"):
            return run
        s.clock.sleep(s.schedule.poll_s)
        s.tick(new_runs=False)
    raise AssertionError(f"job did not finish: {run}")


def test_a_run_that_succeeds_but_cannot_be_registered_is_retried_each_tick_until_it_registers(env):
    blocked = env.tmp / "models"
    blocked.write_text("not a folder: the registry cannot be written")  # e.g. its volume is not mounted
    s = env.scheduler()
    assert s.tick()["action"] == "submitted"
    run = finish_job(s)
    assert run["status"] == "register_pending" and run["outcome"] == "register_error" and run["job_status"] == "SUCCEEDED"
    assert "models" in run["error"] and run["register_attempts"] == 1
    env.clock.t += HOUR
    assert s.tick()["action"] == "unchanged"  # its job is not run again...
    run = s.state()["runs"][-1]
    assert run["status"] == "register_pending" and run["register_attempts"] == 2  # ...but registering is tried again
    blocked.unlink()  # the registry is back
    s.tick()
    run = s.state()["runs"][-1]
    assert run["status"] == "done" and run["outcome"] == "promoted" and run["error"] is None and run["register_attempts"] == 3
    assert ModelRegistry(blocked).latest("tiny")["version"] == "v0001" and len(env.jobs()) == 1
    s.tick()
    assert [v["version"] for v in ModelRegistry(blocked).versions("tiny")] == ["v0001"]  # registered once


def test_once_exits_nonzero_while_a_succeeded_run_is_not_registered(env, monkeypatch):
    from typer.testing import CliRunner

    import mdistill.pipelines.schedule as recipe
    from mdistill.cli import app

    (env.tmp / "models").write_text("blocked")
    sched = env.scheduler()
    monkeypatch.setattr(recipe, "Scheduler", lambda *a, **k: sched)  # the CLI's scheduler: this test's clock and jobs
    r = CliRunner().invoke(app, ["schedule", str(REPO / "configs" / "tiny.yaml"), "schedule.interval_s=3600", "--once"])
    assert r.exit_code == 1 and '"status": "register_pending"' in r.output, r.output


def test_every_student_of_a_run_is_registered_under_name_dash_student(env):
    env.students = ["small", "big"]
    s = env.scheduler()
    final = s.run_once()["final"]
    assert final["status"] == "done" and final["outcome"] == "promoted"
    reg = ModelRegistry(env.tmp / "models")
    assert reg.names() == ["tiny-big", "tiny-small"]
    run = s.state()["runs"][-1]
    assert {k: (r["name"], r["version"]) for k, r in run["registry"].items()} == {
        "small": ("tiny-small", "v0001"),
        "big": ("tiny-big", "v0001"),
    }
    assert reg.latest("tiny-big")["info"]["student"] == "big"


def test_a_student_that_fails_to_register_is_retried_without_registering_the_others_again(env):
    env.students = ["small", "big"]
    s = env.scheduler()
    s.tick()
    run = s.state()["runs"][-1]
    while not (env.tmp / "state" / "jobs" / run["submission_id"] / "rc").exists():
        time.sleep(0.05)  # the job has ended: break one student's export before the scheduler looks
    modules = Path(run["output_dir"]) / "models" / "big" / "modules.json"
    saved = modules.read_bytes()
    modules.unlink()
    run = finish_job(s)
    assert run["status"] == "register_pending" and list(run["registry"]) == ["small"]
    assert run["error"].startswith("big: RegistryError") and "modules.json" in run["error"]
    modules.write_bytes(saved)
    s.tick()
    run = s.state()["runs"][-1]
    assert run["status"] == "done" and sorted(run["registry"]) == ["big", "small"]
    reg = ModelRegistry(env.tmp / "models")
    assert [v["version"] for v in reg.versions("tiny-small")] == ["v0001"] and [v["version"] for v in reg.versions("tiny-big")] == ["v0001"]


class StopClock(FakeClock):
    """Fails a test that would otherwise loop for ever: the scheduler's loop may sleep once."""

    def sleep(self, seconds: float) -> None:
        raise AssertionError("the scheduler kept ticking on a corrupt state file")


@pytest.mark.parametrize("content", [b'{"last_fire": 1767225600.0, "runs": [{"run_id": "tiny-0001', b"[]", b"\xff\xfe garbage"])
def test_corrupt_state_json_is_backed_up_and_stops_the_scheduler_with_an_error_naming_it(env, content):
    from mdistill.scheduler import StateError

    state = env.tmp / "state" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_bytes(content)
    s = env.scheduler()
    with pytest.raises(StateError, match=rf"{state}: .*copied to {state}\.corrupt-"):
        s.tick()
    (backup,) = state.parent.glob("state.json.corrupt-*")
    assert backup.read_bytes() == content and state.read_bytes() == content  # not started over
    assert env.jobs() == []
    env.clock = StopClock()
    with pytest.raises(StateError):
        env.scheduler().run_forever()  # stops, does not retry every poll_s
    assert len(list(state.parent.glob("state.json.corrupt-*"))) == 1  # one copy, however often it is tried


def test_schedule_command_reports_a_corrupt_state_in_one_line(env, tmp_path):
    from typer.testing import CliRunner

    from mdistill.cli import app

    state = tmp_path / "st" / "state.json"
    state.parent.mkdir()
    state.write_text("{ not json")
    args = ["schedule", str(REPO / "configs" / "tiny.yaml"), "schedule.interval_s=3600", f"schedule.state_dir={state.parent}", "--once"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and f"error: {state}: corrupt JSON at line 1 column 3" in r.output, r.output
    assert "Traceback" not in r.output


GIT = {"part": "gettext", "name": "git", "kind": "changed", "old": "1:2.39.2-1.1", "new": "1:2.39.5-0+deb12u3"}


class FakeUpstream:
    """The upstream check as the scheduler sees it (corpus.upstream.check_upstream's result): each
    call answers the next of ``answers`` (then the last again) and records where its apt lists go."""

    def __init__(self, *answers: dict):
        self.answers, self.apt_dirs = list(answers), []

    def __call__(self, cfg, apt_dir, log):
        self.apt_dirs.append(apt_dir)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def checked(*applied: dict, changes: list | None = None) -> dict:
    parts = sorted({c["part"] for c in applied})
    return {
        "ok": True,
        "error": None,
        "changes": changes or list(applied),
        "applied": list(applied),
        "refreshed": parts,
        "refresh_errors": {},
    }


def test_a_new_upstream_version_submits_a_run_that_names_it(env):
    up = FakeUpstream(checked(), checked(GIT), checked())
    s = env.scheduler(upstream=up)
    assert s.tick()["action"] == "submitted"  # the baseline run
    follow(s)
    env.clock.t += HOUR
    ev = s.tick()  # the corpus files and the teacher are as before: only the archive changed
    assert ev["action"] == "submitted" and ev["reason"] == "changed: upstream (upstream: git 1:2.39.2-1.1 -> 1:2.39.5-0+deb12u3)"
    assert ev["upstream"]["changes"] == ["git 1:2.39.2-1.1 -> 1:2.39.5-0+deb12u3"] and ev["upstream"]["refreshed"] == ["gettext"]
    state = s.state()
    assert state["runs"][-1]["upstream"] == [GIT] and state["upstream_pending"] == []
    assert state["upstream"]["applied"] == [GIT] and state["upstream"]["at"].startswith("2026-01-01T01:00")
    assert up.apt_dirs[-1] == env.tmp / "state" / "apt"  # private lists, in the scheduler's state dir
    follow(s)
    env.clock.t += HOUR
    assert s.tick()["action"] == "unchanged" and len(env.jobs()) == 2


def test_a_change_not_applied_to_the_cache_does_not_submit(env):
    """The check saw a new version but could not refresh the cache: a run would build the old corpus."""
    s = env.scheduler(upstream=FakeUpstream(checked(), {**checked(), "changes": [GIT], "refresh_errors": {"gettext": "download failed"}}))
    s.tick()
    follow(s)
    env.clock.t += HOUR
    ev = s.tick()
    assert ev["action"] == "unchanged" and ev["upstream"]["changes"] == ["git 1:2.39.2-1.1 -> 1:2.39.5-0+deb12u3"]
    assert s.state()["ticks"][-1]["what"].endswith("gettext not refreshed: download failed")


def test_a_failed_upstream_check_warns_and_decides_on_the_fingerprints(env, monkeypatch):
    """The real check (no apt here: shutil.which finds nothing) through the tick: no crash, a warning
    naming the reason, the tick decides as before; the corpus change is still seen."""
    from mdistill.config import SourceConfig
    from mdistill.corpus import upstream

    monkeypatch.setattr(upstream.shutil, "which", lambda name: None)
    debian_src = [SourceConfig(format="debian", parts=["gettext"])]
    logs: list[str] = []
    s = env.scheduler(upstream=lambda cfg, apt_dir, log: upstream.check_upstream(debian_src, ["de"], env.tmp / "cache", apt_dir, log))
    s.log = logs.append
    assert s.tick()["action"] == "submitted"
    follow(s)
    env.clock.t += HOUR
    ev = s.tick()
    assert ev["action"] == "unchanged" and ev["upstream"]["ok"] is False and "apt-get is not available" in ev["upstream"]["error"]
    assert any(line.startswith("warning: the Debian sources' upstream versions could not be checked (apt-get") for line in logs)
    assert s.state()["upstream"]["ok"] is False and "upstream check failed: apt-get" in s.state()["ticks"][-1]["what"]
    env.change_corpus()
    env.clock.t += HOUR
    assert s.tick()["action"] == "submitted"


def test_upstream_changes_survive_a_crash_between_the_refresh_and_the_submission(env):
    s = env.scheduler(upstream=FakeUpstream(checked()))
    s.tick()
    follow(s)

    def crash(cfg):
        raise Crash

    env.clock.t += HOUR
    with pytest.raises(Crash):  # the cache was refreshed, then the process died
        env.scheduler(upstream=FakeUpstream(checked(GIT)), fingerprint=crash).tick()
    assert env.scheduler().state()["upstream_pending"] == [GIT]
    s = env.scheduler(upstream=FakeUpstream(checked()))  # restart: the archive and the cache agree now
    ev = s.tick()
    assert ev["action"] == "submitted" and "git 1:2.39.2-1.1 -> 1:2.39.5-0+deb12u3" in ev["reason"]
    assert s.state()["runs"][-1]["upstream"] == [GIT]
