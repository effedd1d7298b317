"""The tune: section -> Ray Tune search space, validation, and the sizing of a search (no Ray running)."""

import pytest

from mdistill.config import ConfigError, load_config
from mdistill.resources import concurrent_trainers
from mdistill.tune_space import (
    dev_every,
    num_trials,
    search_space,
    shape_key,
    student_shapes,
    trial_config,
)

SPACE = (
    "tune={num_samples: 3, space: {train.lr: {loguniform: [1.0e-4, 1.0e-3]}, train.warmup_ratio: {uniform: [0, 0.1]},"
    " train.batch_size: {choice: [32, 64]}, train.loss: {choice: [mse, cosine]}, student.train_layers: {grid: [2, 4]}}}"
)


def test_tune_small_config_validates():
    cfg = load_config("configs/tune-small.yaml")
    assert cfg.tune.num_samples >= 6 and num_trials(cfg.tune) >= 6
    assert cfg.tune.scheduler.asha.max_t == cfg.tune.reports
    assert [s["student.train_layers"] for s in student_shapes(cfg)] == [2, 4]


def test_space_maps_to_tune_domains():
    from ray.tune.search.sample import Categorical, Float

    cfg = load_config("configs/default.yaml", [SPACE])
    space = search_space(cfg.tune)
    lr, warm = space["train.lr"], space["train.warmup_ratio"]
    assert isinstance(lr, Float) and (lr.lower, lr.upper) == (1e-4, 1e-3) and type(lr.sampler).__name__ == "_LogUniform"
    assert isinstance(warm, Float) and (warm.lower, warm.upper) == (0, 0.1) and type(warm.sampler).__name__ == "_Uniform"
    assert isinstance(space["train.batch_size"], Categorical) and space["train.batch_size"].categories == [32, 64]
    assert space["student.train_layers"] == {"grid_search": [2, 4]}
    assert num_trials(cfg.tune) == 6  # 3 samples x the 2-value grid
    # grid search: every choice becomes a grid; optuna has no grid: categorical
    g = load_config("configs/default.yaml", [SPACE.replace("{loguniform: [1.0e-4, 1.0e-3]}", "{choice: [1.0e-4]}").replace(
        "{uniform: [0, 0.1]}", "{grid: [0.0]}"), "tune.search=grid"])  # fmt: skip
    assert search_space(g.tune)["train.loss"] == {"grid_search": ["mse", "cosine"]}
    assert num_trials(g.tune) == 3 * 2 * 2 * 2
    o = load_config("configs/default.yaml", [SPACE, "tune.search=optuna"])
    assert isinstance(search_space(o.tune)["student.train_layers"], Categorical)


def test_trial_config_and_student_shapes():
    cfg = load_config("configs/default.yaml", [SPACE])
    t = trial_config(cfg.model_dump(), {"train.lr": 2e-4, "train.loss": "cosine", "student.train_layers": 2})
    assert (t.train.lr, t.train.loss, t.student.train_layers) == (2e-4, "cosine", 2)
    assert t.train.epochs == cfg.train.epochs and t.corpus == cfg.corpus
    assert student_shapes(cfg) == [{"student.train_layers": 2}, {"student.train_layers": 4}]
    assert shape_key({"student.train_layers": 2, "train.lr": 1e-3}) == "train_layers-2" and shape_key({"train.lr": 1}) == "base"


@pytest.mark.parametrize(
    "space, message",
    [
        ("{train.lrr: {choice: [1.0e-4]}}", "train.lrr: no such key"),
        ("{optimizer.lr: {choice: [1.0e-4]}}", "only train.<key> and student.<key>"),
        ("{train.lr: {uniform: [-1, 1]}}", "train.lr: value -1"),
        ("{train.loss: {choice: [mse, l1]}}", "train.loss: value 'l1'"),
        ("{train.batch_size: {choice: [0, 64]}}", "train.batch_size: value 0"),
        ("{train.lr: {loguniform: [0, 1.0e-3]}}", "loguniform bounds must be > 0"),
        ("{train.lr: {uniform: [1.0e-3, 1.0e-4]}}", "must be < upper bound"),
        ("{train.lr: {uniform: [1.0e-4, 1.0e-3], choice: [1]}}", "exactly one of"),
        ("{train.temperature: {uniform: [1, 4]}}", "only the classify recipe reads it"),
        ("{train.alpha: {uniform: [0, 1]}}", "only the classify recipe reads it"),
        ("{train.dev_every: {choice: [5]}}", "tune.reports"),
        ("{student.train_layers: {randint: [1, 4]}}", "give choice or grid"),
        ("{}", "at least one key"),
    ],
)
def test_invalid_space_names_the_key(space, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.").replace("<", ".").replace(">", ".")):
        load_config("configs/default.yaml", [f"tune={{space: {space}}}"])


def test_invalid_tune_settings():
    with pytest.raises(ConfigError, match="lower-is-better"):
        load_config("configs/default.yaml", ["tune={metric: dev_pooled_mse100, space: {train.lr: {choice: [1.0e-4]}}}"])
    with pytest.raises(ConfigError, match="search: grid needs finite values"):
        load_config("configs/default.yaml", ["tune={search: grid, space: {train.lr: {uniform: [1.0e-4, 1.0e-3]}}}"])
    with pytest.raises(ConfigError, match="tune.search"):
        load_config("configs/default.yaml", ["tune={search: hyperopt, space: {train.lr: {choice: [1.0e-4]}}}"])


@pytest.mark.parametrize(
    "resources, workers, use_gpu, expected",
    [
        ({"CPU": 2}, 1, False, 2),  # two 1-worker trials, 1 thread each, data tasks in the remaining 1 CPU
        ({"CPU": 2}, 2, False, 1),
        ({"CPU": 16}, 1, False, 8),  # 2 threads per worker
        ({"CPU": 16}, 2, False, 4),
        ({"CPU": 16, "GPU": 4}, 1, True, 4),  # one GPU per trial
        ({"CPU": 16, "GPU": 4}, 2, True, 2),
        ({"CPU": 16, "GPU": 4}, 1, False, 8),  # GPUs unused: CPU sizing
    ],
)
def test_derived_max_concurrent_trials(resources, workers, use_gpu, expected):
    assert concurrent_trainers(resources, workers, use_gpu) == expected


def test_derived_concurrency_fits_train_worker_sizing():
    from mdistill.resources import train_worker_resources

    for cpus in (2, 4, 16):
        n = concurrent_trainers({"CPU": cpus}, 1, False)
        per, threads = train_worker_resources({"CPU": cpus}, 1, False, concurrent=n)
        assert per["CPU"] * n <= cpus - 1 + 1e-9 or cpus <= 2 and per["CPU"] * n <= 1  # a CPU left for the data tasks
        assert threads >= 1
    with pytest.raises(ValueError, match="needs 2 GPU"):
        concurrent_trainers({"CPU": 8, "GPU": 1}, 2, True)


def test_dev_every_gives_the_reports_at_any_batch_size():
    for batch in (16, 32, 64):
        every = dev_every(train_rows=3000, workers=1, batch_size=batch, bucket_rows=1024, epochs=1, grad_accum=1, reports=4)
        from mdistill.training.step import steps_per_epoch

        total = steps_per_epoch(3000, batch, 1024)
        assert total // every >= 4 and total // every < 8
    assert dev_every(train_rows=10, workers=2, batch_size=64, bucket_rows=1024, epochs=1, grad_accum=1, reports=4) == 1
