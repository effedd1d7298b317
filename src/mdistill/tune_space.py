"""The ``tune:`` section of a config as Ray Tune objects, and the sizing of a search. Pure
functions, no compute and no running Ray: ``pipelines/tune.py`` uses them, tests check them.

- ``search_space``: ``tune.space`` -> a Tune ``param_space`` (flat, dotted keys).
- ``trial_config``: the base config + one trial's sampled values -> a validated ``RunConfig``.
- ``student_shapes``: every distinct ``student:`` section the space can produce (one frozen pass each).
- ``dev_every``: optimizer steps between dev evaluations so that a trial reports ``tune.reports`` times.
"""

from __future__ import annotations

import itertools
import math

from mdistill.config import RunConfig, TuneConfig, _merge, _set_dotted


def search_space(tune: TuneConfig) -> dict:
    """``{dotted key: tune domain}``. ``grid`` -> ``tune.grid_search`` (every value, crossed with
    the other grid keys; with ``search: optuna`` a categorical instead, Optuna has no grid);
    ``choice`` -> ``tune.choice`` (``search: grid``: every value too)."""
    from ray import tune as rt

    space = {}
    for key, spec in tune.space.items():
        kind = spec.kind
        if kind == "uniform":
            space[key] = rt.uniform(*spec.uniform)
        elif kind == "loguniform":
            space[key] = rt.loguniform(*spec.loguniform)
        elif kind == "randint":
            space[key] = rt.randint(*spec.randint)
        elif kind == "grid" and tune.search != "optuna" or kind == "choice" and tune.search == "grid":
            space[key] = rt.grid_search(list(spec.values))
        else:
            space[key] = rt.choice(list(spec.values))
    return space


def num_trials(tune: TuneConfig) -> int:
    """Trials the search will run: grid keys multiply ``num_samples`` (Ray's BasicVariantGenerator)."""
    grid = [len(s.values) for s in tune.space.values() if s.kind == "grid" or (s.kind == "choice" and tune.search == "grid")]
    if tune.search == "optuna":
        grid = []
    return tune.num_samples * math.prod(grid)


def trial_config(base: dict, sampled: dict) -> RunConfig:
    """The base config (a ``RunConfig.model_dump()``) with one trial's ``{dotted key: value}``."""
    tree: dict = {}
    for key, value in sampled.items():
        _set_dotted(tree, key, value)
    return RunConfig.model_validate(_merge(base, tree))


def student_shapes(cfg: RunConfig) -> list[dict]:
    """Every ``{student.key: value}`` combination the space can give (``[{}]`` when no student key
    is searched): the frozen pass depends on the student, so each gets its own, before Tune starts."""
    keys = [k for k in cfg.tune.space if k.startswith("student.")]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(cfg.tune.space[k].values for k in keys))]


def shape_key(sampled: dict) -> str:
    """A file-name-safe name of a trial's student shape, e.g. ``train_layers-2`` (``base`` when none)."""
    parts = [f"{k.split('.', 1)[1]}-{sampled[k]}" for k in sorted(sampled) if k.startswith("student.")]
    return "_".join(parts).replace("/", "-").replace(" ", "") or "base"


def dev_every(train_rows: int, workers: int, batch_size: int, bucket_rows: int, epochs: int, grad_accum: int, reports: int) -> int:
    """Optimizer steps between dev evaluations so that a trial evaluates ``reports`` times, at the same
    fractions of its training whatever its batch size (ASHA compares trials at equal iterations)."""
    from mdistill.training.step import steps_per_epoch

    total_micro = steps_per_epoch(train_rows // workers, batch_size, bucket_rows) * epochs
    total_steps = -(-total_micro // grad_accum)
    return max(1, total_steps // reports)
