"""Sizing of actor pools and trainers from the cluster's resources, node by node.

Measured on 2 CPUs (see docs/cluster.md, "Sizing on small machines"): two inference actors at 1 CPU each leave no CPU for
the Ray Data read tasks and hang; Ray Train workers that hold every CPU starve the data tasks.
On several nodes an actor or a worker must also fit on ONE node: a plan sized from the cluster's
total (3 nodes of 1 CPU = "3 CPUs") asks for actors no node can host, and waits forever.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Nodes = Mapping | Sequence[Mapping]  # one node's (or the cluster's) resources, or one dict per node / `ray.nodes()`


def node_resources(nodes: Nodes) -> list[dict]:
    """The resources of each alive node: from ``ray.nodes()`` entries, plain dicts, or one dict."""
    if isinstance(nodes, Mapping):
        return [dict(nodes)]
    out = [dict(n["Resources"]) if "Resources" in n else dict(n) for n in nodes if n.get("Alive", True)]
    if not out:
        raise ValueError("no alive Ray node")
    return out


@dataclass(frozen=True)
class ActorPlan:
    size: int  # actors in the pool
    num_cpus: float  # per actor
    num_gpus: float  # per actor
    threads: int  # torch threads per actor (CPU)


def _cpu_node_plan(cpus: float) -> ActorPlan:
    """Actors of 2 threads, leaving a CPU for the read tasks (on 2 CPUs: one actor holding one)."""
    if cpus <= 2:
        return ActorPlan(size=1, num_cpus=max(0.5, math.floor(cpus) / 2), num_gpus=0, threads=max(1, int(cpus)))
    return ActorPlan(size=max(1, int(cpus - 1) // 2), num_cpus=2, num_gpus=0, threads=2)


def inference_plan(nodes: Nodes, max_actors: int | None = None) -> ActorPlan:
    """One actor per GPU, on whichever node holds it; without GPUs, each node's CPU plan summed.

    A pool has one ``num_cpus`` for every actor: it is the smallest any node needs, so every
    actor fits on every node (exact for nodes alike, the usual cluster)."""
    per_node = node_resources(nodes)
    gpus = sum(int(n.get("GPU", 0)) for n in per_node)
    if gpus >= 1:
        gpu_nodes = [n for n in per_node if int(n.get("GPU", 0)) >= 1]
        # an actor's CPU share leaves half a CPU of its node to the data tasks (a node of 1 CPU + 1 GPU: 0.5)
        share = min(min(1.0, (float(n.get("CPU", 1)) - 0.5) / int(n["GPU"])) for n in gpu_nodes)
        threads = max(1, min(int(float(n.get("CPU", 1)) // int(n["GPU"])) - 1 for n in gpu_nodes))
        size = gpus if max_actors is None else min(gpus, max_actors)
        return ActorPlan(size=size, num_cpus=max(0.1, math.floor(share * 20) / 20), num_gpus=1, threads=threads)
    plans = [_cpu_node_plan(float(n.get("CPU", 0))) for n in per_node if float(n.get("CPU", 0)) >= 1]
    if not plans:
        raise ValueError(f"no Ray node has a whole CPU for an inference actor: {per_node}")
    size = sum(p.size for p in plans)  # each node keeps room for its share of the read and write tasks
    return ActorPlan(
        size=size if max_actors is None else min(size, max_actors),
        num_cpus=min(p.num_cpus for p in plans),
        num_gpus=0,
        threads=min(p.threads for p in plans),
    )


def train_worker_resources(nodes: Nodes, workers: int, use_gpu: bool, concurrent: int = 1) -> tuple[dict, int]:
    """CPU per worker (leaving room for the data tasks) and torch threads per worker, for
    ``concurrent`` trainers of ``workers`` workers each sharing the cluster; a worker never asks
    more CPU than the largest node has."""
    if use_gpu:  # one GPU per worker; concurrent trainers queue for GPUs rather than share one
        return {"CPU": 1, "GPU": 1}, 4
    per_node = node_resources(nodes)
    n = workers * concurrent
    cpus = sum(float(r.get("CPU", 0)) for r in per_node)
    largest = max(float(r.get("CPU", 0)) for r in per_node)
    per = max(0.1, min(cpus / n, (cpus - 1) / n)) if cpus > 1 else 0.5 / n
    per = math.floor(min(per, cpus / n, largest) * 100) / 100  # rounded down: n workers must leave the data tasks their CPU
    threads = max(1, int(min(cpus // n, largest)))
    return {"CPU": per}, threads


def concurrent_trainers(resources: dict, workers: int, use_gpu: bool) -> int:
    """Trainers at once (Tune trials, the classify recipe's students), so that none starves another
    or the Ray Data tasks feeding them.

    GPU: one GPU per worker (a trainer of 1 worker = one GPU), and a CPU per worker for its data.
    CPU: a trainer's workers get ``train_worker_resources(..., concurrent=n)``, which leaves a CPU
    for the data tasks; 2 torch threads per worker where there are more than 2 CPUs, 1 thread on
    2 CPUs (so two 1-worker trainers share a 2-core machine and overlap their start-up)."""
    cpus = int(resources.get("CPU", 1))
    if use_gpu:
        gpus = int(resources.get("GPU", 0))
        if gpus < workers:
            raise ValueError(f"train.use_gpu with {workers} worker(s) per trainer needs {workers} GPU(s); the cluster has {gpus}")
        return max(1, min(gpus // workers, max(1, cpus - 1) // workers))
    per_trainer = workers * (1 if cpus <= 2 else 2)
    return max(1, cpus // per_trainer)
