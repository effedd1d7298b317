"""What a run on several Ray nodes needs from its folders, checked before any compute.

Every node reads and writes the run's folders: Ray Data tasks read the corpus and the caches'
Parquet shards, training workers read the dev rows and the initial head and write checkpoints
to ``<output_dir>/ray_train``. On one machine any local path works. On several machines
``cache_dir`` and ``output_dir`` must be one filesystem that every node mounts at the same path
(NFS, EFS, Lustre, a FUSE mount of a bucket...). Ray itself only finds out when a worker fails
to write its first checkpoint; this module asks every alive node, with a zero-CPU task pinned to
it, whether it sees a marker file the driver just wrote.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

MARKER = ".mdistill-shared-probe-"


class NodeLocalPathError(RuntimeError):
    """A run folder that some node of the cluster cannot see."""


def _sees(markers: dict[str, str]) -> list[str]:
    """On one node: the keys whose marker file is there with the driver's token."""
    seen = []
    for key, path in markers.items():
        try:
            if Path(path).read_text() == path.rsplit(MARKER, 1)[1]:
                seen.append(key)
        except OSError:
            pass
    return seen


def check_shared(folders: dict[str, Path]) -> int:
    """Raise ``NodeLocalPathError`` naming the key, the path and the nodes that cannot see it, if
    a folder is not shared by every alive node. Returns the number of nodes checked (one node:
    nothing to check)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) <= 1:
        return len(nodes)
    markers = {}
    for key, folder in folders.items():
        folder = Path(folder).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        path = folder / f"{MARKER}{token}"
        path.write_text(token)
        markers[key] = str(path)
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(_sees)
        refs = {
            n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(markers)
            for n in nodes
        }
        seen = dict(zip(refs, ray.get(list(refs.values()), timeout=120)))
    finally:
        for path in markers.values():
            os.unlink(path)
    for key, folder in folders.items():
        blind = [f"{n['NodeID'][:12]} ({n['NodeManagerAddress']})" for n in nodes if key not in seen[n["NodeID"]]]
        if blind:
            raise NodeLocalPathError(
                f"{key}={folder} is not visible from {len(blind)} of {len(nodes)} Ray nodes: {', '.join(blind)}. "
                f"A run on several nodes needs {key} on a filesystem every node mounts at the same path "
                "(NFS, EFS, Lustre, a bucket through FUSE); see docs/cluster.md, 'Several nodes'."
            )
    return len(nodes)
