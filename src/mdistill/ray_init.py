"""Start or join Ray. The local instance's dashboard/Jobs API listens on loopback only: the config
(``RayConfig``) refuses another ``ray.dashboard_host`` unless Ray token auth is on (RAY_AUTH_MODE=token)."""

from __future__ import annotations

import os

from mdistill.config import RayConfig


def init_ray(cfg: RayConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME") if k in os.environ}
    env["TOKENIZERS_PARALLELISM"] = "false"
    if cfg.address:
        ray.init(address=cfg.address, runtime_env={"env_vars": env})
    else:
        # "local": a new instance even if a `ray start` cluster (or a stale one's address file) is
        # on this host; a Ray job's driver (RAY_ADDRESS set by the job supervisor) joins its cluster
        address = None if os.environ.get("RAY_ADDRESS") else "local"
        ray.init(
            address=address,
            num_cpus=cfg.num_cpus,
            dashboard_host=cfg.dashboard_host,
            include_dashboard=True,
            runtime_env={"env_vars": env},
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
