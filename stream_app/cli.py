"""``stream-app`` command line: worker, preflight, demo."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from stream_app.config import ConfigError, load_config
from stream_app.demo import example_names


def _load_checked(config: str):
    from stream_app.preflight import run_preflight

    settings = load_config(config)
    run_preflight(settings)
    return settings


@click.group()
def main() -> None:
    """Deterministic clearing files from matched-record Kafka topics."""


@main.command()
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="Worker config YAML.")
def preflight(config: str) -> None:
    """Validate config, templates and sink; exit non-zero naming the bad key."""
    from stream_app.preflight import run_preflight

    try:
        checked = run_preflight(load_config(config))
    except ConfigError as exc:
        click.echo(f"preflight failed: {exc}", err=True)
        sys.exit(2)
    for item in checked:
        click.echo(f"ok  {item}")


@main.command()
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="Worker config YAML.")
def worker(config: str) -> None:
    """Run the long-running Faust worker."""
    try:
        settings = _load_checked(config)
    except ConfigError as exc:
        click.echo(f"preflight failed: {exc}", err=True)
        sys.exit(2)
    import faust

    from stream_app.live.app import create_app

    app, _runtime = create_app(settings)
    faust.Worker(app, loglevel=settings.logLevel, quiet=True).execute_from_commandline()


@main.command()
@click.option("--records", default=2000, show_default=True, help="Matched records to generate.")
@click.option("--out", "out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the clearing files.")
@click.option("--seed", default=42, show_default=True, help="Seed of the generated sample.")
@click.option("--partitions", default=3, show_default=True, help="Partitions of the input topic.")
@click.option("--example", default="template-clearing", show_default=True,
              type=click.Choice(example_names()), help="Worker config from examples/ to run.")
def demo(records: int, out: str, seed: int, partitions: int, example: str) -> None:
    """Embedded broker -> sample records -> worker -> clearing files, then a summary."""
    from stream_app.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None
    result = run_demo(records, Path(out), seed, partitions, bootstrap, example)
    click.echo(f"{len(result.files)} clearing files, {result.records} records, in {result.out_dir.resolve()}")
    for event in result.files:
        click.echo(f"  {event['file_name']:<40} {event['records']:>6} records {event['bytes']:>9} bytes")
    counts = ", ".join(f"{k}={v}" for k, v in sorted(result.journal_counts.items()))
    click.echo(f"journal events: {counts}")
    click.echo(f"dead letters: {result.dead_letters} (the sample includes deliberately malformed records)")


if __name__ == "__main__":
    main()
