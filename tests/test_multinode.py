"""A real Ray cluster of several nodes on this machine (``ray.cluster_utils.Cluster``: a head with
1 CPU and the dashboard, two worker nodes of 1 CPU each declaring ``GPU: 1``), so the pool
sizing, ``num_gpus``, placement and node failures run for real on a CPU machine (an actor given a
declared GPU finds no CUDA device and runs the CPU kernel).

- the teacher pool is one actor per GPU node, the shards are written on the driver's node;
- a worker node killed mid-pass: the pass finishes on the other, every sentence once;
- (training spread over nodes and a node killed mid-training: ``test_submit.py``, on a cluster
  of ``ray start`` nodes, with the job submitted as a user would);
- a folder a node cannot see fails before any compute (a node in its own mount namespace).

Node ids of actors and workers are printed (``pytest -s``, or in the report on failure).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import teacher_pass, terminal_line

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


class MultiNode:
    def __init__(self, cluster, gpu_nodes: list):
        self.cluster, self.gpu_nodes = cluster, gpu_nodes

    def add_gpu_node(self):
        node = self.cluster.add_node(num_cpus=1, num_gpus=1)
        self.gpu_nodes.append(node)
        self.cluster.wait_for_nodes()
        return node

    def kill(self, node_id: str) -> None:
        """SIGKILL a worker node (its raylet and every worker on it), as a lost machine."""
        node = next(n for n in self.gpu_nodes if n.node_id == node_id)
        self.gpu_nodes.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)


@pytest.fixture(scope="module")
def multinode(request):
    import ray
    from ray.cluster_utils import Cluster
    from test_submit import free_port

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port()},
    )
    m = MultiNode(cluster, [])
    for _ in range(2):
        m.add_gpu_node()
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE",) if k in os.environ}
    ray.init(address=cluster.address, runtime_env={"env_vars": {**env, "TOKENIZERS_PARALLELISM": "false"}})
    nodes = {n["NodeID"][:8]: {k: v for k, v in n["Resources"].items() if k in ("CPU", "GPU")} for n in ray.nodes() if n["Alive"]}
    terminal_line(request.config, f"  cluster: {nodes}")
    yield m
    ray.shutdown()
    cluster.shutdown()


def _driver_node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _texts(pairs, n_pairs: int = 20) -> list[str]:
    base = list(pairs.en) + list(pairs.text)
    return [f"{a} {b}" for i, a in enumerate(base) for b in base[i + 1 : i + 1 + n_pairs]]


def _cache_keys(cache) -> list[str]:
    return pa.concat_tables([pq.read_table(p, columns=["key"]) for p in cache.shards()]).column("key").to_pylist()


def test_teacher_pool_one_actor_per_gpu_node_shards_on_the_driver(multinode, tmp_path, tiny_models, pairs, show):
    from mdistill.config import TeacherConfig

    texts = _texts(pairs, 4)
    cfg = TeacherConfig(model=str(tiny_models["teacher"]), batch_size=16)
    cache, stats = teacher_pass(cfg, texts, tmp_path / "cache", block_rows=64, commit_rows=128)
    gpu_nodes = {n.node_id for n in multinode.gpu_nodes}
    show("teacher rows by node:", {k[:8]: v for k, v in stats.computed_by_node.items()}, "written on:", [w[:8] for w in stats.written_on])
    assert set(stats.computed_by_node) == gpu_nodes  # both GPU nodes computed, the CPU-only head none
    assert stats.written_on == [_driver_node()]
    keys = _cache_keys(cache)
    assert len(keys) == len(set(keys)) == stats.distinct_texts == stats.computed == len(set(texts))


def _submit_attempts() -> tuple[int, int]:
    """Actor tasks of the teacher pool: (attempts, tasks) from Ray's state API (the dashboard)."""
    from ray.util.state import list_tasks

    tasks = list_tasks(filters=[("func_or_class_name", "=", "MapWorker(MapBatches(TeacherPredictor)).submit")], limit=10_000, detail=True)
    return len(tasks), len({t.task_id for t in tasks})


def test_teacher_pass_survives_a_killed_node(multinode, tmp_path, tiny_models, pairs, show):
    from mdistill.config import TeacherConfig

    texts = _texts(pairs, 20)  # ~11k texts: the pass lasts long enough to lose a node in its middle
    cfg = TeacherConfig(model=str(tiny_models["teacher"]), batch_size=16)
    out: dict = {}

    def run() -> None:
        out["result"] = teacher_pass(cfg, texts, tmp_path / "cache", block_rows=128, commit_rows=256)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 300
    while not list((tmp_path / "cache" / "teacher").glob("*/*.parquet")) and time.time() < deadline:
        time.sleep(0.1)
    victim = multinode.gpu_nodes[0].node_id
    multinode.kill(victim)
    show(f"killed node {victim[:8]} after the first shard")
    t.join(600)
    assert not t.is_alive(), "the pass did not finish on the remaining node"
    cache, stats = out["result"]
    attempts, tasks = _submit_attempts()
    keys = _cache_keys(cache)
    show(
        f"distinct {stats.distinct_texts}, computed {stats.computed} "
        f"({', '.join(f'{k[:8]}: {v}' for k, v in stats.computed_by_node.items())}), "
        f"actor tasks {tasks} with {attempts - tasks} retried attempt(s), cache rows {len(keys)}, distinct keys {len(set(keys))}"
    )
    assert victim in stats.computed_by_node and len(stats.computed_by_node) == 2  # both computed; the survivor finished
    assert len(keys) == len(set(keys)) == stats.distinct_texts == len(set(texts))
    assert stats.corrupt_shards == [] and not list(cache.dir.glob(".*.tmp"))
    multinode.add_gpu_node()  # the next test gets two GPU nodes again


def test_a_folder_some_node_cannot_see_fails_before_compute(multinode, tmp_path, show):
    """A node started in its own mount namespace, where the run's folder is an empty tmpfs: the
    folder exists on the driver's machine, not on that node, as a node-local disk would."""
    import ray

    from mdistill.storage import NodeLocalPathError, check_shared

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no unprivileged mount namespaces on this machine")
    shared, local = tmp_path / "shared", tmp_path / "local"
    local.mkdir()
    nodes_before = len([n for n in ray.nodes() if n["Alive"]])
    assert check_shared({"cache_dir": shared, "output_dir": local}) == nodes_before  # one host: every node sees both
    ray_bin = str(Path(sys.executable).parent / "ray")
    gcs = multinode.cluster.address
    cmd = f"mount -t tmpfs none {local} && exec {ray_bin} start --address={gcs} --num-cpus=1 --block --disable-usage-stats"
    proc = subprocess.Popen(
        ["unshare", "-rm", "sh", "-c", cmd], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 120
        while len([n for n in ray.nodes() if n["Alive"]]) <= nodes_before and time.time() < deadline:
            time.sleep(1)
        with pytest.raises(NodeLocalPathError, match=r"output_dir=.*not visible from 1 of \d Ray nodes"):
            check_shared({"cache_dir": shared, "output_dir": local})
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert not list(local.iterdir()) and not list(shared.iterdir())  # the markers are cleaned up
