"""Every manifest in cluster/ parses, and the fields that matter are right: images, entrypoints
(they run `mdistill run` / `mdistill schedule` with a config that exists and validates), GPU
resources on the workers and none on the head, the schedule, the RayJob's clean-up."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from croniter import croniter

from mdistill.config import SECRET_EXCLUDES, UPLOAD_EXCLUDES, load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
IMAGE = "ghcr.io/example/mdistill:0.1.0"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def kind(name: str, k: str) -> dict:
    (doc,) = [d for d in docs(name) if d.get("kind") == k]
    return doc


def check_mdistill_command(argv: list[str], command: str) -> None:
    """`mdistill <command> CONFIG overrides...`: the config is one of configs/ (at /app in the
    image) and validates with the overrides, as `mdistill` would do it before any compute."""
    assert argv[:2] == ["mdistill", command], argv
    config = argv[2]
    local = REPO / config.removeprefix("/app/")
    assert local.parent == REPO / "configs" and local.exists(), config
    overrides = [a for a in argv[3:] if not a.startswith("--")]
    load_config(local, overrides)  # raises ConfigError on an unknown key or a bad value


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def gpus(container: dict) -> str | None:
    return container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")


def token_from_secret(container: dict) -> bool:
    env = {e["name"]: e for e in container.get("env", [])}
    ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    return ref.get("name") == "mdistill-ray-token" and "value" not in env.get("RAY_AUTH_TOKEN", {})


def test_every_file_parses():
    files = [p for p in CLUSTER.rglob("*.yaml")]
    assert {p.relative_to(CLUSTER).as_posix() for p in files} >= {
        "ray-cluster.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "kuberay/cronjob.yaml",
    }
    for p in files:
        assert docs(p.relative_to(CLUSTER).as_posix()), p


def check_ray_cluster_spec(spec: dict) -> None:
    """Head: no GPU, no pipeline CPUs, token auth; GPU workers: nvidia.com/gpu limits; one image."""
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0" and head["rayStartParams"]["num-cpus"] == "0"
    for c in containers(head["template"]):
        assert c["image"] == IMAGE and gpus(c) is None
        assert token_from_secret(c)
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in c["env"]
    gpu_groups = [g for g in spec["workerGroupSpecs"] if any(gpus(c) for c in containers(g["template"]))]
    assert gpu_groups, "no GPU worker group"
    for g in spec["workerGroupSpecs"]:
        for c in containers(g["template"]):
            assert c["image"] == IMAGE and token_from_secret(c)
    for g in gpu_groups:
        (c,) = containers(g["template"])
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"]
        assert any(t.get("key") == "nvidia.com/gpu" for t in g["template"]["spec"].get("tolerations", []))


def test_raycluster():
    rc = kind("kuberay/raycluster.yaml", "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    assert rc["spec"]["rayVersion"] == "2.60.0"
    assert rc["spec"]["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"  # the Jobs API is not exposed
    check_ray_cluster_spec(rc["spec"])
    pvc = kind("kuberay/raycluster.yaml", "PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_rayjob():
    rj = kind("kuberay/rayjob.yaml", "RayJob")
    assert rj["apiVersion"] == "ray.io/v1"
    spec = rj["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    check_mdistill_command(shlex.split(spec["entrypoint"]), "run")
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert not [k for k in env["env_vars"] if k.endswith(("_TOKEN", "_SECRET", "_PASSWORD", "_KEY"))]  # no secrets in runtime_env
    check_ray_cluster_spec(spec["rayClusterSpec"])
    (sub,) = containers(spec["submitterPodTemplate"])
    assert sub["image"] == IMAGE and token_from_secret(sub)


def test_cronjob():
    cj = kind("kuberay/cronjob.yaml", "CronJob")
    assert cj["apiVersion"] == "batch/v1"
    spec = cj["spec"]
    assert croniter.is_valid(spec["schedule"])
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]
    assert pod["spec"]["restartPolicy"] in ("Never", "OnFailure")
    (c,) = containers(pod)
    assert c["image"] == IMAGE and gpus(c) is None and token_from_secret(c)
    argv = c["command"] + c.get("args", [])
    assert "--once" in argv
    check_mdistill_command(argv, "schedule")
    cfg = load_config(REPO / argv[2].removeprefix("/app/"), [a for a in argv[3:] if not a.startswith("--")])
    assert cfg.schedule.cron == spec["schedule"]  # the scheduler's record of ticks matches the CronJob
    assert cfg.schedule.address.startswith("http://mdistill-head-svc:8265")  # the RayCluster's head Service
    assert cfg.schedule.state_dir.startswith("/data/") and cfg.schedule.runs_dir.startswith("/data/")  # on the shared PVC
    assert any(m["mountPath"] == "/data" for m in c["volumeMounts"])


def test_cluster_launcher():
    cl = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    types = cl["available_node_types"]
    head = types[cl["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values()), "no GPU worker type"
    assert cl["max_workers"] >= sum(t.get("max_workers", 0) for n, t in types.items() if n != cl["head_node_type"])
    # torch first, then mdistill
    setup = cl["setup_commands"]
    torch_i = next(i for i, c in enumerate(setup) if "torch==" in c)
    pkg_i = next(i for i, c in enumerate(setup) if "mdistill" in c and "pip install" in c)
    assert torch_i < pkg_i
    head_start = " ".join(cl["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert all("RAY_AUTH_MODE=token" in c for c in cl["worker_start_ray_commands"] if "ray start" in c)


def test_dockerfile_installs_torch_first():
    lines = (CLUSTER / "Dockerfile").read_text().splitlines()
    torch_i = next(i for i, x in enumerate(lines) if "torch==" in x)
    pkg_i = next(i for i, x in enumerate(lines) if x.startswith("RUN pip install") and ".[assets]" in x)
    assert torch_i < pkg_i
    assert any(x.startswith("COPY configs/") for x in lines)  # the manifests' /app/configs/...


@pytest.mark.parametrize("name", ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/cronjob.yaml"])
def test_no_inline_secrets(name):
    text = (CLUSTER / name).read_text()
    for d in docs(name):
        assert d.get("kind") != "Secret", "secrets are created with kubectl, not committed"
    assert "auth_token=" not in text.replace("--from-literal=auth_token=", "")


def test_cluster_launcher_passes_rays_own_validator():
    """What `ray up` checks before it calls AWS: defaults filled in, then Ray's ray-schema.json (no
    cluster, no cloud calls). The validator is live: a misspelt key fails it."""
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    cl = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(cl)))
    cl["rsync_excludes"] = []
    with pytest.raises(Exception, match="rsync_excludes"):
        validate_config(prepare_config(cl))


def test_cluster_launcher_syncs_nothing_submit_would_not_upload():
    """`ray up` rsyncs the checkout through .rayignore (and .gitignore) = what `mdistill submit`
    never uploads; rsync_exclude stays free of patterns that would drop the launcher's own
    single-file mounts (the SSH key it copies to the head, the auth token)."""
    import fnmatch

    cl = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    assert cl["file_mounts"]["/home/ubuntu/mdistill"] == "."
    assert {".rayignore", ".gitignore"} <= set(cl.get("rsync_filter", []))
    lines = [x for x in (REPO / ".rayignore").read_text().splitlines() if x.strip() and not x.startswith("#")]
    expected = "\n".join(UPLOAD_EXCLUDES + SECRET_EXCLUDES)
    assert lines == UPLOAD_EXCLUDES + SECRET_EXCLUDES, f".rayignore is out of date; its patterns should read:\n{expected}"
    own_files = ["ray-autoscaler_us-west-2.pem", "auth_token", "ray_bootstrap_config.yaml"]
    assert not [(p, f) for p in cl.get("rsync_exclude", []) for f in own_files if fnmatch.fnmatch(f, p.rstrip("/"))]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    steps, buf = [], ""
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not (buf or line.strip()):
            continue
        buf += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            instr, _, args = buf.strip().partition(" ")
            steps.append((instr.upper(), " ".join(args.split())))
            buf = ""
    return steps


def test_dockerfile_prefetches_the_jobs_debian_corpus_for_non_root_pods():
    """The pods run as a non-root user without apt lists: the RayJob's config's Debian inputs are
    fetched at build time, as root, after mdistill is installed, into the folder the image names
    as $MDISTILL_DEBIAN_SEED (where a run copies them from)."""
    steps = dockerfile()
    user_i = next(i for i, (k, a) in enumerate(steps) if k == "USER")
    assert steps[user_i][1] not in ("root", "0")
    pkg_i = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and ".[assets]" in a)
    fetch_i, fetch = next((i, a) for i, (k, a) in enumerate(steps) if k == "RUN" and "prefetch_debian(" in a)
    assert pkg_i < fetch_i < user_i  # mdistill installed, still root
    assert fetch.index("apt-get update") < fetch.index("prefetch_debian(")
    config_arg, cache = re.search(r"prefetch_debian\('([^']+)', '([^']+)'\)", fetch).groups()
    (arg,) = [a for k, a in steps if k == "ARG" and a.startswith("CORPUS_CONFIG=")]
    assert config_arg == "${CORPUS_CONFIG}"
    rayjob = shlex.split(kind("kuberay/rayjob.yaml", "RayJob")["spec"]["entrypoint"])
    assert rayjob[2] == "/app/" + arg.split("=", 1)[1]  # WORKDIR /app: the config the RayJob runs
    envs = dict(a.split("=", 1) for k, a in steps[fetch_i:] if k == "ENV" and a.startswith("MDISTILL_DEBIAN_SEED="))
    assert envs == {"MDISTILL_DEBIAN_SEED": cache + "/debian"}
