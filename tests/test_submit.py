"""`mdistill submit` against a real Ray cluster of three nodes (`ray start --head` on 127.0.0.1
with 1 CPU, token auth on, and two `ray start --address` worker nodes of 1 CPU + a declared GPU
each): a tiny distillation (tiny random-init models, the small real corpus fixture) runs as a Ray
job, with its teacher actors off the driver's node and its training workers on two nodes,
finishes SUCCEEDED, its logs hold the run's report, and the cluster is stopped (only its own
processes: `ray stop` would end every Ray process of the user on this host)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import tiny_run_overrides

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_processes(temp_dir: str, sid: int) -> list:
    """The head's processes: those in the session `ray start` ran in, those naming our temp dir
    on their command line (workers name the session dir), and all their children."""
    import psutil

    found = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getsid(p.pid) == sid or temp_dir in " ".join(p.info["cmdline"] or []):
                found[p.pid] = p
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            continue
    for p in list(found.values()):
        try:
            for c in p.children(recursive=True):
                found[c.pid] = c
        except psutil.NoSuchProcess:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_head(temp_dir: str, sid: int) -> None:
    import psutil

    procs = _own_processes(temp_dir, sid)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def kill_session(sid: int) -> int:
    """SIGKILL every process of one session (a worker node started by `ray start` in its own
    session: its raylet and every worker it spawned), as a machine lost. Returns how many."""
    import psutil

    procs = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid and p.pid != os.getpid():
                procs.append(p)
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            continue
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=15)
    return len(procs)


class RayCluster:
    """The head's address and token, and its worker nodes by session id."""

    def __init__(self, cmd: list[str], env: dict, gcs: int, **info):
        self.cmd, self.env, self.gcs, self.nodes, self.temp_dirs = cmd, env, gcs, [], []
        self.__dict__.update(info)

    def join(self) -> int:
        """Start a worker node (1 CPU, a declared GPU) in its own session and its own temp dir;
        returns the session id. Own temp dir, as on a separate machine: nodes sharing one unpack the
        job's working_dir into the same folder, and a rejoining node's runtime-env agent re-extracts
        it (rmtree first), deleting the cwd of the job's processes on the other nodes."""
        temp_dir = tempfile.mkdtemp(prefix="mdrn", dir="/tmp")
        self.temp_dirs.append(temp_dir)
        join = [
            self.cmd[0],
            "start",
            f"--address=127.0.0.1:{self.gcs}",
            "--num-cpus=1",
            "--num-gpus=1",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ]
        node = subprocess.Popen(join, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.nodes.append(node.pid)
        out, _ = node.communicate(timeout=120)
        assert node.returncode == 0, out
        return node.pid


@pytest.fixture
def ray_head():
    """A Ray cluster of our own: a head with its own temp dir (short: Ray's unix socket paths are
    length-limited), own ports, token auth with a fresh token, dashboard/Jobs API on 127.0.0.1
    only; and two worker nodes joining it."""
    temp_dir = tempfile.mkdtemp(prefix="mdray", dir="/tmp")
    token = secrets.token_hex(16)
    dash, gcs = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # the job's `mdistill` is the venv's
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--num-cpus=1",
        f"--temp-dir={temp_dir}",
        f"--port={gcs}",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        "--disable-usage-stats",
    ]
    # its own session: everything it spawns can be found (and ended) by session id
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sid = proc.pid
    cluster = RayCluster(cmd, env, gcs, address=f"http://127.0.0.1:{dash}", dashboard_port=dash, token=token, temp_dir=temp_dir, sid=sid)
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        for _ in range(2):
            cluster.join()
        yield cluster
    finally:
        for node_sid in cluster.nodes:
            kill_session(node_sid)
        stop_head(temp_dir, sid)
        for d in [temp_dir, *cluster.temp_dirs]:
            shutil.rmtree(d, ignore_errors=True)


def _listen_addresses(port: int) -> set[str]:
    import psutil

    return {c.laddr.ip for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def _kill_a_training_node(cluster: RayCluster) -> int | None:
    """Kill the worker node (by session) that runs a Ray Train worker; None if none does yet."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or []) and (sid := os.getsid(p.pid)) in cluster.nodes:
                kill_session(sid)
                cluster.nodes.remove(sid)
                return sid
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            continue
    return None


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_submit_tiny_distillation(tmp_path, ray_head, tiny_models, pairs, monkeypatch, show):
    address = ray_head.address
    # security defaults: the Jobs API is on loopback only, and refuses a request without the token
    assert _listen_addresses(ray_head.dashboard_port) == {"127.0.0.1"}
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{address}/api/jobs/", timeout=10)
    assert refused.value.code in (401, 403)

    out = tmp_path / "run"
    overrides = [
        *tiny_run_overrides(tmp_path, tiny_models, pairs.to_dict("records")),
        "student.train_layers=2",
        "train.epochs=2",
        "train.max_steps=8",
        "train.bucket_rows=64",
        "train.placement_strategy=SPREAD",  # the two workers on two nodes
        "train.checkpoint_every=2",
        "train.max_failures=2",
    ]
    # the client gets the token the way a user's shell would: RAY_AUTH_TOKEN (no RAY_AUTH_MODE needed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_TOKEN=ray_head.token, HF_HUB_OFFLINE="1")
    mdistill = str(Path(sys.executable).parent / "mdistill")

    t0 = time.time()
    sub = subprocess.run(
        [mdistill, "submit", "configs/tiny.yaml", *overrides, "--address", address],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sub.returncode == 0, sub.stderr[-3000:]
    job_id = sub.stdout.strip().splitlines()[-1]
    assert job_id.startswith("raysubmit_")

    def cli(*args: str) -> str:
        r = subprocess.run([mdistill, "jobs", *args, "--address", address], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    # mid-training, a worker node is lost (the one a training worker runs on; never the head),
    # then capacity returns: the worker group restarts from the registered checkpoint
    snapshot = out / "ray_train" / "student" / "checkpoint_manager_snapshot.json"
    killed = None
    while time.time() - t0 < 900 and killed is None:
        if "checkpoint_" in (snapshot.read_text() if snapshot.exists() else ""):
            killed = _kill_a_training_node(ray_head)
        elif cli("status", job_id).strip() not in ("PENDING", "RUNNING"):
            break
        time.sleep(0.2)
    show(f"killed the worker node of session {killed} after the first registered checkpoint")
    ray_head.join()

    status = cli("status", job_id).strip()
    while status in ("PENDING", "RUNNING") and time.time() - t0 < 1300:
        time.sleep(5)
        status = cli("status", job_id).strip()
    logs = cli("logs", job_id)
    show(f"job {job_id}: {status} after {time.time() - t0:.0f} s")
    assert status == "SUCCEEDED", logs[-5000:]

    # the logs hold the run's progress lines and its report table; the report and model exist
    assert "[mdistill.report] stage train done" in logs  # the pipeline's progress lines
    assert "| de |" in logs  # report.md, printed at the end of the run
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").exists()
    assert job_id in cli("list")
    export_paths = [s["export"]["path"] for s in report["students"].values()]
    assert all(Path(p, "modules.json").exists() for p in export_paths)
    # on more than one node: the teacher pool on the declared-GPU nodes (the head has none; the
    # job's driver runs there and its tasks write the cache), the two training workers spread
    teacher, workers = report["teacher_cache"], report["students"]["student"]["logs"]["worker_nodes"]
    show("teacher rows by node:", teacher["computed_by_node"], "written on:", teacher["written_on"], "workers on:", workers)
    assert teacher["computed_by_node"] and set(teacher["computed_by_node"]).isdisjoint(teacher["written_on"])
    assert len(workers) == 2 and len(set(workers)) == 2
    resumed = report["students"]["student"]["logs"]["resumed_at"]
    show("resumed at steps", resumed)
    assert killed is not None and resumed and resumed[0] >= 2  # from the checkpoint, not from scratch

    # the scheduler's Ray backend on the same head: an unknown id is None (never submitted), and an
    # id that exists is refused, which is what makes a restarted scheduler's re-submission safe
    from mdistill.config import JobConfig
    from mdistill.scheduler import RayJobsBackend

    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    backend = RayJobsBackend(JobConfig(code="installed"), address)
    assert backend.status(job_id) == "SUCCEEDED"
    assert backend.status("mdistill-never-submitted") is None
    with pytest.raises(RuntimeError, match="already"):
        backend.submit(job_id, "true", {})


# -- the pieces of a submission, without a cluster ---------------------------------------------


def test_auth_token_lookup_order(tmp_path, monkeypatch):
    from mdistill import jobs

    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert jobs.auth_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert jobs.auth_token() == "from-home"
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert jobs.auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.auth_token() == "from-env"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.auth_token() is None


def test_entrypoint_and_runtime_env():
    from mdistill import jobs
    from mdistill.config import load_config

    cfg = load_config(REPO / "configs" / "tiny.yaml", ["job.entrypoint_num_cpus=2", "job.working_dir=" + str(REPO)])
    config = jobs.config_for_job(REPO / "configs" / "tiny.yaml", cfg.job)
    assert config == "configs/tiny.yaml"
    cmd = jobs.run_entrypoint(config, ["corpus.langs=[de, fr]"], cfg.job)
    assert cmd == "OMP_NUM_THREADS=2 mdistill run configs/tiny.yaml 'corpus.langs=[de, fr]'"
    env = jobs.runtime_env(cfg.job)
    assert env["working_dir"] == str(REPO) and ".venv" in env["excludes"] and "/runs/" in env["excludes"]
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1" and env["env_vars"]["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    with pytest.raises(ValueError, match="outside job.working_dir"):
        jobs.config_for_job("/etc/some.yaml", cfg.job)
    installed = cfg.job.model_copy(update={"code": "installed"})
    assert jobs.config_for_job("/app/configs/default.yaml", installed) == "/app/configs/default.yaml"
    assert "working_dir" not in jobs.runtime_env(installed)


# A folder as a user might submit it from: no .gitignore, credentials and big local outputs next
# to the config and the data.
KEEP = ["configs/run.yaml", "data/train.tsv", "src/pkg/models/__init__.py", "src/pkg/keys.py", "notes/environment.md"]
DROP = [
    ".env",
    ".env.production",
    ".envrc",
    ".netrc",
    ".ssh/id_rsa",
    ".ssh/config",
    ".ray/auth_token",
    ".aws/credentials",
    ".docker/config.json",
    ".cache/huggingface/token",
    "data/.cache/shard.bin",
    "id_ed25519",
    "deploy/id_rsa.pub",
    "deploy/server.pem",
    "deploy/tls.key",
    "models/default/1/model.safetensors",
    "runs/default/report.json",
    ".git/config",
    ".venv/bin/python",
    "src/pkg/__pycache__/keys.cpython-311.pyc",
]


def user_folder(root: Path) -> Path:
    for rel in KEEP + DROP:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    return root


def uploaded(job_cfg, scratch: Path) -> set[str]:
    """The files `mdistill submit` would upload: the runtime_env it sends, through Ray's own
    working_dir packaging (what JobSubmissionClient runs before its PUT), zipped here, no cluster."""
    from zipfile import ZipFile

    from ray._private.runtime_env.packaging import create_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    from mdistill import jobs

    seen: dict = {}

    def capture(working_dir: str, excludes: list[str], is_file: bool = False) -> None:
        seen.update(working_dir=working_dir, excludes=excludes)

    upload_working_dir_if_needed(jobs.runtime_env(job_cfg), include_gitignore=True, upload_fn=capture)
    pkg = scratch / "package.zip"
    create_package(seen["working_dir"], pkg, include_gitignore=True, excludes=seen["excludes"])
    with ZipFile(pkg) as z:
        return {n for n in z.namelist() if not n.endswith("/")}


def test_submit_without_gitignore_uploads_no_secrets_caches_or_models(tmp_path):
    from mdistill.config import JobConfig

    folder = user_folder(tmp_path / "work")
    assert uploaded(JobConfig(working_dir=str(folder)), tmp_path) == set(KEEP)


def test_user_excludes_extend_the_defaults_never_replace_them(tmp_path, monkeypatch):
    from mdistill.config import JobConfig

    # Ray's own defaults (.git, .venv, ... in Ray >= 2.5x) are an env var away from empty: not relied on
    monkeypatch.setenv("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", "")
    folder = user_folder(tmp_path / "work")
    got = uploaded(JobConfig(working_dir=str(folder), excludes=["data/"]), tmp_path)
    assert got == set(KEEP) - {"data/train.tsv"}


def test_user_negation_reincludes_a_default_but_never_a_secret(tmp_path):
    from mdistill.config import JobConfig

    folder = user_folder(tmp_path / "work")
    cfg = JobConfig(working_dir=str(folder), excludes=["!/models/", "!.env*", "!*.pem", "!.ssh/"])
    assert uploaded(cfg, tmp_path) == set(KEEP) | {"models/default/1/model.safetensors"}
