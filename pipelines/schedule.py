"""Periodic re-distillation: ``mdistill schedule CONFIG``.

On each tick (cron or interval): a run in flight is followed to its end; a failed one is retried
with backoff; when a schedule time is due and the corpus, the teacher or the settings changed
since the last finished run, or the Debian archive has a new version of a package or DDTP index the
corpus reads (``mdistill.corpus.upstream``: checked against private apt lists, the cached part is
refreshed first), ``mdistill run`` is submitted (Ray Jobs API, or a local process),
and the finished run's students are registered with the registry's promotion gate. The teacher
cache makes each new run pay only for new sentences. See ``mdistill.redistill.Scheduler``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mdistill.config import RunConfig
from mdistill.redistill import Scheduler


def schedule(
    cfg: RunConfig,
    config_path: Path,
    overrides: list[str],
    *,
    once: bool,
    force: bool,
    state_dir: Path | None,
    log: Callable[[str], None],
) -> dict | None:
    """``once``: one tick that counts as a schedule time, then follow its run (what a CronJob
    calls); otherwise tick every ``schedule.poll_s`` until stopped."""
    sched = Scheduler(cfg, config_path, overrides, state_dir=state_dir, log=log)
    if once:
        return sched.run_once(force=force)
    if force:
        sched.tick(force=True)
    sched.run_forever()
    return None
