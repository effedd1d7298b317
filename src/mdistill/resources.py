"""Sizing of actor pools and trainers from the cluster's resources.

Measured on 2 CPUs (see README, "Sizing"): two inference actors at 1 CPU each leave no CPU for
the Ray Data read tasks and hang; Ray Train workers that hold every CPU starve the data tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ActorPlan:
    size: int  # actors in the pool
    num_cpus: float  # per actor
    num_gpus: float  # per actor
    threads: int  # torch threads per actor (CPU)


def inference_plan(resources: dict, max_actors: int | None = None) -> ActorPlan:
    """One actor per GPU; without GPUs, actors of 2 threads, leaving CPU for the read tasks."""
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    if gpus >= 1:
        size = gpus if max_actors is None else min(gpus, max_actors)
        return ActorPlan(size=size, num_cpus=1, num_gpus=1, threads=max(1, cpus // gpus - 1))
    if cpus <= 2:
        return ActorPlan(size=1, num_cpus=1, num_gpus=0, threads=cpus)
    size = max(1, (cpus - 1) // 2)
    if max_actors is not None:
        size = min(size, max_actors)
    return ActorPlan(size=size, num_cpus=2, num_gpus=0, threads=2)


def train_worker_resources(resources: dict, workers: int, use_gpu: bool, concurrent: int = 1) -> tuple[dict, int]:
    """CPU per worker (leaving room for the data tasks) and torch threads per worker, for
    ``concurrent`` trainers of ``workers`` workers each sharing the cluster."""
    if use_gpu:  # one GPU per worker; concurrent trainers queue for GPUs rather than share one
        return {"CPU": 1, "GPU": 1}, 4
    n = workers * concurrent
    cpus = float(resources.get("CPU", 1))
    per = max(0.1, min(cpus / n, (cpus - 1) / n)) if cpus > 1 else 0.5 / n
    per = math.floor(min(per, cpus / n) * 100) / 100  # rounded down: n workers must leave the data tasks their CPU
    threads = max(1, int(cpus // n))
    return {"CPU": per}, threads
