"""``stream-app`` command line: worker, preflight, demo."""

from __future__ import annotations

import logging
import logging.config
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO, cast

import click

from stream_app.config import ConfigError, load_config
from stream_app.demo import example_names
from stream_app.ops.problems import BrokerProblem, CredentialsMissing, classify

CONFIG_ERROR = 2  # and click's usage errors; the broker's and credentials' codes are in ops/problems.py


@contextmanager
def reported(command: str) -> Iterator[None]:
    """Configuration, broker and credential problems of ``command`` as one line on stderr and
    the exit code of their class (ops/problems.py), never a traceback."""
    from confluent_kafka import KafkaException

    try:
        yield
    except CredentialsMissing as exc:
        click.echo(f"stream-app {command}: credentials missing: {exc}", err=True)
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        click.echo(f"stream-app {command}: {exc}", err=True)
        sys.exit(CONFIG_ERROR)
    except BrokerProblem as exc:
        click.echo(f"stream-app {command}: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KafkaException as exc:
        problem = classify(exc, "Kafka")
        click.echo(f"stream-app {command}: {problem}", err=True)
        sys.exit(problem.exit_code)


def _load_checked(config: str):
    """The worker's start: preflight, except that templates it cannot render without a sample
    record are reported in the log, not refused (run ``stream-app preflight`` for that)."""
    from stream_app.preflight import run_preflight

    settings = load_config(config)
    for item in run_preflight(settings, require_samples=False):
        if item.startswith("NOT CHECKED"):
            logging.getLogger("stream_app.preflight").warning("preflight: %s", item)
    return settings


@click.group()
def main() -> None:
    """Deterministic clearing files from matched-record Kafka topics."""


@main.command()
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="Worker config YAML.")
@click.option("--skip-render", is_flag=True,
              help="Without a sample record (JSON input, a registry): report the templates as not checked, not fail.")
def preflight(config: str, skip_render: bool) -> None:
    """Validate config, templates and sink; exit non-zero naming the bad key."""
    from stream_app.preflight import run_preflight

    try:
        checked = run_preflight(load_config(config), require_samples=not skip_render)
    except ConfigError as exc:
        click.echo(f"preflight failed: {exc}", err=True)
        sys.exit(2)
    for item in checked:
        click.echo(f"ok  {item}")


@main.command("config")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="Worker config YAML.")
def show_config(config: str) -> None:
    """Print the effective configuration (defaults filled in, credentials masked)."""
    from stream_app.config import dump_config

    try:
        click.echo(dump_config(load_config(config)), nl=False)
    except ConfigError as exc:
        click.echo(f"invalid configuration: {exc}", err=True)
        sys.exit(2)


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
    from stream_app.live.startup import wait_for_broker
    from stream_app.ops.gc import tune_for_throughput
    from stream_app.ops.logging import logging_config

    tune_for_throughput()

    log_config = logging_config(settings.logLevel, settings.logFormat)
    logging.config.dictConfig(log_config)
    from stream_app.codecs.registry import RegistryUnavailable

    with reported("worker"):
        wait_for_broker(settings)
        if settings.worker.fileScope == "window":
            from stream_app.live.repartition import RepartitionTopicError, ensure_repartition_topic

            try:
                ensure_repartition_topic(settings)
            except RepartitionTopicError as exc:
                click.echo(f"stream-app worker: {exc}", err=True)
                sys.exit(CONFIG_ERROR)
        try:
            app, _runtime = create_app(settings)
        except RegistryUnavailable as exc:  # registering the event schemas: the restart retries
            click.echo(f"stream-app worker: {exc}", err=True)
            sys.exit(1)
    from stream_app.ops.logging import dump_stacks

    class Worker(faust.Worker):
        async def _cry(self) -> None:  # SIGUSR1: stacks without local variables (record values)
            dump_stacks(cast(TextIO, self.stderr))

    Worker(app, loglevel=settings.logLevel, quiet=True, logging_config=log_config).execute_from_commandline()


@main.command()
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="Worker config YAML.")
@click.option("--from-offset", "from_offsets", multiple=True, metavar="P=OFFSET", help="First offset of partition P.")
@click.option("--to-offset", "to_offsets", multiple=True, metavar="P=OFFSET",
              help="Exclusive end of partition P: the first offset not replayed (a manifest range's last "
                   "offset + 1); default: the end of the partition.")
@click.option("--from-time", help="Rebuild the file windows that start at or after this time (event time, ISO-8601).")
@click.option("--to-time", help="... and before this time (event time, ISO-8601).")
@click.option("--window", "window", help="Replay the recorded parts of the file window starting at this time.")
@click.option("--partitions", help="Comma-separated partitions (default: all).")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Write to this directory instead of the sink.")
@click.option("--allow-partial", is_flag=True,
              help="With --out: write files an offset range holds only part of, as PARTIAL_<name>.")
@click.option("--verify", is_flag=True, help="Write nothing; compare with the stored files and the manifest.")
def replay(config: str, from_offsets: tuple[str, ...], to_offsets: tuple[str, ...], from_time: str | None,
           to_time: str | None, window: str | None, partitions: str | None, out: str | None, allow_partial: bool,
           verify: bool) -> None:
    """Regenerate (or --verify) files from a bounded range, byte-identical to the live run."""
    from stream_app.replay import ReplayError
    from stream_app.replay_cli import ReplayRequest, parse_offsets, parse_time, run_replay

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = _load_checked(config) if out is None and not verify else load_config(config)
        request = ReplayRequest(
            partitions=[int(p) for p in partitions.split(",")] if partitions else None,
            from_offsets=parse_offsets(from_offsets, "--from-offset"),
            to_offsets=parse_offsets(to_offsets, "--to-offset"),
            from_time_ms=parse_time(from_time) if from_time else None,
            to_time_ms=parse_time(to_time) if to_time else None,
            window_start_ms=parse_time(window) if window else None,
            out_dir=Path(out) if out else None,
            verify=verify,
            allow_partial=allow_partial,
        )
        with reported("replay"):
            report = run_replay(settings, request)
    except (ConfigError, ReplayError, ValueError) as exc:
        click.echo(f"replay failed: {exc}", err=True)
        sys.exit(CONFIG_ERROR)
    action = "verified" if verify else "wrote"
    click.echo(f"{action} {len(report.files)} files from {report.records} records in {report.seconds:.1f} s")
    if report.dead_letters:
        click.echo("dead letters (not published): " + ", ".join(f"{k}={v}" for k, v in
                                                                 sorted(report.dead_letters.items())))
    for name in report.partial:
        click.echo(f"PARTIAL     {name}: holds only the range's part of its window (not a live file)")
    for problem in report.problems:
        click.echo(problem)
    if report.problems:
        sys.exit(1)


@main.command("journal")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="Worker config YAML.")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only these event types (repeatable).")
@click.option("--file-key", help="Only the events of this file key.")
@click.option("--window", help="Only the events of the file windows starting at this time (ISO-8601).")
@click.option("--since", help="Only events that occurred at or after this time (ISO-8601).")
@click.option("--until", help="Only events that occurred before this time (ISO-8601).")
@click.option("--follow", is_flag=True, help="Keep reading new events (Ctrl-C to stop).")
@click.option("--summary", is_flag=True, help="One line per file window: files, records, bytes, failures.")
def journal(config: str, types: tuple[str, ...], file_key: str | None, window: str | None, since: str | None,
            until: str | None, follow: bool, summary: bool) -> None:
    """Read the journal topic: one JSON object per event (or per window with --summary)."""
    import orjson

    from stream_app.inspect_cli import JournalFilter, journal_events, plain, window_summary
    from stream_app.replay_cli import parse_time

    try:
        settings = load_config(config)
        selection = JournalFilter(types, file_key, parse_time(window) if window else None,
                                  parse_time(since) if since else None, parse_time(until) if until else None)
    except (ConfigError, ValueError) as exc:
        click.echo(f"journal: {exc}", err=True)
        sys.exit(2)
    if summary and follow:
        click.echo("journal: --summary reads to the end; it does not combine with --follow", err=True)
        sys.exit(2)
    events = journal_events(settings, selection, follow)
    try:
        with reported("journal"):
            if summary:
                for row in window_summary(list(events)):
                    click.echo(orjson.dumps(row).decode())
            else:
                for event in events:
                    click.echo(orjson.dumps(plain(event)).decode())
                    if follow:
                        sys.stdout.flush()  # a line as it comes, also into a pipe
    except KeyboardInterrupt:
        pass


@main.command("dead-letters")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="Worker config YAML.")
@click.option("--reason", "reasons", multiple=True, metavar="REASON", help="Only these reasons (repeatable).")
@click.option("--list", "listing", is_flag=True, help="One JSON object per dead letter (coordinates, reason, "
                                                        "value length and sha256), instead of counts by reason.")
@click.option("--show-values", is_flag=True, help="With --list on a terminal: the original values too.")
@click.option("--redrive", is_flag=True, help="Send the selected dead letters back to their source topic, once each.")
@click.option("--to-topic", help="With --redrive: send them to this topic instead.")
def dead_letters_command(config: str, reasons: tuple[str, ...], listing: bool, show_values: bool, redrive: bool,
                         to_topic: str | None) -> None:
    """Count, list or re-drive the dead letters (record contents only with --show-values on a terminal)."""
    import orjson

    from stream_app.inspect_cli import dead_letters
    from stream_app.inspect_cli import redrive as redrive_letters

    try:
        settings = load_config(config)
    except ConfigError as exc:
        click.echo(f"dead-letters: {exc}", err=True)
        sys.exit(2)
    if show_values and not sys.stdout.isatty():
        click.echo("dead-letters: --show-values prints record contents; only to a terminal", err=True)
        sys.exit(2)
    if redrive:
        with reported("dead-letters"):
            report = redrive_letters(settings, reasons, to_topic)
        click.echo(f"re-drove {report.produced} dead letter(s); {report.skipped} passed over "
                   "(not selected, or without a value)")
        return
    counts: dict[str, int] = {}
    with reported("dead-letters"):
        for letter in dead_letters(settings, reasons):
            counts[letter.envelope["reason"]] = counts.get(letter.envelope["reason"], 0) + 1
            if listing:
                click.echo(orjson.dumps(letter.describe(show_values)).decode())
    if not listing:
        for reason, count in sorted(counts.items()):
            click.echo(f"{count:>8}  {reason}")
        click.echo(f"{sum(counts.values()):>8}  total")


@main.command("produce-demo")
@click.option("--records", default=20000, show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.option("--partitions", default=3, show_default=True)
@click.option("--topic", default="matched-records", show_default=True)
def produce_demo(records: int, seed: int, partitions: int, topic: str) -> None:
    """Produce the seeded sample to KAFKA_BOOTSTRAP_SERVERS (registering the schema when
    SCHEMA_REGISTRY_URL is set) — the demo producer of docker-compose.yml."""
    from stream_app.broker import create_topics
    from stream_app.demo import produce_sample

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        click.echo("KAFKA_BOOTSTRAP_SERVERS is not set", err=True)
        sys.exit(2)
    with reported("produce-demo"):
        create_topics(bootstrap, {topic: partitions})
        count = produce_sample(bootstrap, topic, records, seed, partitions, os.environ.get("SCHEMA_REGISTRY_URL"))
    click.echo(f"produced {count} matched records to {topic}")


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
    from stream_app.broker import EmbeddedBrokerMissing

    try:
        result = run_demo(records, Path(out), seed, partitions, bootstrap, example)
    except EmbeddedBrokerMissing as exc:
        click.echo(f"stream-app demo: {exc}", err=True)
        sys.exit(2)
    click.echo(f"{len(result.files)} clearing files, {result.records} records, in {result.out_dir.resolve()}")
    for event in result.files:
        click.echo(f"  {event['file_name']:<40} {event['records']:>6} records {event['bytes']:>9} bytes")
    counts = ", ".join(f"{k}={v}" for k, v in sorted(result.journal_counts.items()))
    click.echo(f"journal events: {counts}")
    click.echo(f"dead letters: {result.dead_letters} (the sample includes deliberately malformed records)")


if __name__ == "__main__":
    main()
