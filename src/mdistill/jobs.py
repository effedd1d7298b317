"""Hand a run to a Ray cluster through the Jobs API (``ray.job_submission.JobSubmissionClient``).

``mdistill submit CONFIG`` sends ``mdistill run CONFIG overrides`` as the job's entrypoint, with a
runtime_env (the working directory with ``configs/``, env vars) and the entrypoint's resources.

Token authentication (Ray >= 2.52): a head started with ``RAY_AUTH_MODE=token`` (or, with the mode
unset, one that found a token in ``~/.ray/auth_token``) refuses requests without
``Authorization: Bearer <token>``. Ray's own client adds that header only when the *client*
process runs with ``RAY_AUTH_MODE=token``; :func:`client` sends it whenever a token is available
(``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token`` — Ray's
order), unless ``RAY_AUTH_MODE=disabled``. A head without auth ignores the header.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from mdistill.config import SECRET_EXCLUDES, UPLOAD_EXCLUDES, JobConfig

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


def resolve_address(address: str | None) -> str:
    """The Jobs API address: the argument, $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS (if http), or loopback."""
    if address:
        return address
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        if os.environ.get(var, "").startswith(("http://", "https://")):
            return os.environ[var]
    return DEFAULT_ADDRESS


def auth_token() -> str | None:
    """The Ray auth token, looked up where Ray looks for it; None when auth is disabled or no token exists."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if path.is_file():
        return path.read_text().strip() or None
    return None


def client(address: str | None = None) -> JobSubmissionClient:
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(resolve_address(address), headers=headers)


def config_for_job(config_path: str | Path, job_cfg: JobConfig) -> str:
    """The config path as the job sees it: relative to the uploaded working_dir, or as given (installed mode)."""
    if job_cfg.code == "installed":
        return str(config_path)
    root = Path(job_cfg.working_dir).expanduser().resolve()
    path = Path(config_path).expanduser().resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"config {path} is outside job.working_dir {root}: the job would not find it")
    return str(path.relative_to(root))


def run_entrypoint(config: str, overrides: list[str], job_cfg: JobConfig) -> str:
    """``mdistill run CONFIG overrides``, shell-quoted. Ray starts a job's driver with
    OMP_NUM_THREADS=1; the prefix sets it for the driver only (Ray sizes its workers itself)."""
    threads = job_cfg.driver_threads or (int(job_cfg.entrypoint_num_cpus) if job_cfg.entrypoint_num_cpus >= 1 else None)
    prefix = f"OMP_NUM_THREADS={threads} " if threads else ""
    return prefix + shlex.join(["mdistill", "run", config, *overrides])


def upload_excludes(job_cfg: JobConfig) -> list[str]:
    """The runtime_env excludes: the fixed ones, the user's additions, then the secrets. Ray applies
    them as one .gitignore (the last matching line wins), so a user's "!pattern" can re-include a
    default but never a secret."""
    return [*dict.fromkeys([*UPLOAD_EXCLUDES, *job_cfg.excludes]), *SECRET_EXCLUDES]  # secrets never deduplicated away


def runtime_env(job_cfg: JobConfig) -> dict:
    env: dict = {
        # init_ray() passes its own env_vars to ray.init(); equal keys from the job would be a
        # "conflict" without this (values are the same: both come from this config/environment).
        "env_vars": {"RAY_OVERRIDE_JOB_RUNTIME_ENV": "1", **job_cfg.env_vars},
    }
    if job_cfg.code == "working_dir":
        env["working_dir"] = str(Path(job_cfg.working_dir).expanduser().resolve())
        env["excludes"] = upload_excludes(job_cfg)
    if job_cfg.pip:
        env["pip"] = list(job_cfg.pip)
    if job_cfg.py_modules:
        env["py_modules"] = list(job_cfg.py_modules)
    return env


def submit_entrypoint(
    entrypoint: str,
    job_cfg: JobConfig,
    *,
    address: str | None = None,
    submission_id: str | None = None,
    metadata: dict[str, str] | None = None,
) -> str:
    """Submit a shell command as a Ray job; returns the submission id. Raises RuntimeError if
    ``submission_id`` is already taken on the cluster (that is what makes re-submission safe)."""
    return client(address or job_cfg.address).submit_job(
        entrypoint=entrypoint,
        submission_id=submission_id,
        runtime_env=runtime_env(job_cfg),
        metadata=metadata or {},
        entrypoint_num_cpus=job_cfg.entrypoint_num_cpus or None,
        entrypoint_num_gpus=job_cfg.entrypoint_num_gpus or None,
        entrypoint_memory=job_cfg.entrypoint_memory or None,
    )


def submit_run(
    config_path: str | Path,
    overrides: list[str],
    job_cfg: JobConfig,
    *,
    address: str | None = None,
    submission_id: str | None = None,
    metadata: dict[str, str] | None = None,
) -> str:
    """Submit ``mdistill run CONFIG overrides`` to the cluster; returns the job (submission) id."""
    entrypoint = run_entrypoint(config_for_job(config_path, job_cfg), overrides, job_cfg)
    meta = {"mdistill_config": str(config_path), **(metadata or {})}
    return submit_entrypoint(entrypoint, job_cfg, address=address, submission_id=submission_id, metadata=meta)


def job_status(job_id: str, address: str | None = None) -> str:
    return str(client(address).get_job_status(job_id).value)


def job_logs(job_id: str, address: str | None = None) -> str:
    return client(address).get_job_logs(job_id)


def stop_job(job_id: str, address: str | None = None) -> bool:
    return client(address).stop_job(job_id)


def list_jobs(address: str | None = None) -> list:
    return client(address).list_jobs()


def wait(job_id: str, address: str | None = None, *, timeout: float = 3600, poll_s: float = 2.0) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED; TimeoutError after ``timeout`` seconds."""
    c = client(address)
    deadline = time.monotonic() + timeout
    while True:
        status = c.get_job_status(job_id)
        if status in TERMINAL:
            return str(status.value)
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status.value} after {timeout:.0f} s")
        time.sleep(poll_s)
