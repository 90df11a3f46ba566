"""``stream-app`` command line: worker, preflight, replay, the tools and the demo.

Every command finds its configuration the same way (``--config``, else ``STREAM_APP_CONFIG``,
else ``/etc/stream-app/config.yaml``, where the Helm chart mounts it) and exits with the codes
of ops/problems.py.
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from stream_app.config import AppSettings, ConfigError, load_config
from stream_app.ops.problems import CONFIG, DATA, UNREACHABLE, USAGE, BrokerProblem, CredentialsMissing, classify
from stream_app.tools.demo import example_names

DEFAULT_CONFIG = Path("/etc/stream-app/config.yaml")
CONFIG_ENV = "STREAM_APP_CONFIG"

F = TypeVar("F", bound=Callable[..., Any])


def config_option(command: F) -> F:
    return click.option(
        "--config", "config", envvar=CONFIG_ENV, type=click.Path(dir_okay=False),
        help=f"Worker config YAML [env {CONFIG_ENV}; default {DEFAULT_CONFIG} when it exists].")(command)


def config_path(config: str | None) -> str:
    """The config file a command reads: the option, the environment variable, the default path."""
    if config:
        return config
    if DEFAULT_CONFIG.is_file():
        return str(DEFAULT_CONFIG)
    raise click.UsageError(f"no configuration: pass --config, set {CONFIG_ENV} or mount {DEFAULT_CONFIG}")


def settings_from(config: str | None) -> AppSettings:
    return load_config(config_path(config))


def fail(command: str, message: str, code: int) -> NoReturn:
    click.echo(f"stream-app {command}: {message}", err=True)
    sys.exit(code)


@contextmanager
def reported(command: str) -> Iterator[None]:
    """Configuration, broker and credential problems of ``command`` as one line on stderr and
    the exit code of their class (ops/problems.py), never a traceback."""
    from confluent_kafka import KafkaException

    from stream_app.codecs.event_schemas import EventDecodeError

    try:
        yield
    except EventDecodeError as exc:
        fail(command, str(exc), DATA)
    except CredentialsMissing as exc:
        fail(command, f"credentials missing: {exc}", exc.exit_code)
    except ConfigError as exc:
        fail(command, str(exc), CONFIG)
    except BrokerProblem as exc:
        fail(command, str(exc), exc.exit_code)
    except KafkaException as exc:
        problem = classify(exc, "Kafka")
        fail(command, str(problem), problem.exit_code)


class _Commands(click.Group):
    """click's usage errors exit 64 (EX_USAGE), apart from configuration errors (78)."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            exc.exit_code = USAGE
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.exit_code = USAGE
            raise


def _load_checked(config: str | None) -> AppSettings:
    """The worker's start: preflight, except that templates it cannot render without a sample
    record are reported in the log, not refused (run ``stream-app preflight`` for that)."""
    from stream_app.tools.preflight import run_preflight

    settings = settings_from(config)
    for item in run_preflight(settings, require_samples=False):
        if item.startswith("NOT CHECKED"):
            logging.getLogger("stream_app.tools.preflight").warning("preflight: %s", item)
    return settings


@click.group(cls=_Commands)
@click.version_option(installed_version("stream-app"), "--version", prog_name="stream-app",
                      message="%(prog)s %(version)s")
def main() -> None:
    """Deterministic clearing files from matched-record Kafka topics."""


@main.command()
@config_option
@click.option("--skip-render", is_flag=True,
              help="Without a sample record (JSON input, a registry): report the templates as not checked, not fail.")
def preflight(config: str | None, skip_render: bool) -> None:
    """Validate config, templates and sink; exit non-zero naming the bad key."""
    from stream_app.tools.preflight import run_preflight

    with reported("preflight"):
        checked = run_preflight(settings_from(config), require_samples=not skip_render)
    for item in checked:
        click.echo(f"ok  {item}")


@main.command("config")
@config_option
def show_config(config: str | None) -> None:
    """Print the effective configuration (defaults filled in, credentials masked)."""
    from stream_app.config import dump_config

    with reported("config"):
        click.echo(dump_config(settings_from(config)), nl=False)


@main.command()
@config_option
def worker(config: str | None) -> None:
    """Run the long-running Faust worker."""
    with reported("worker"):
        settings = _load_checked(config)
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
                fail("worker", str(exc), CONFIG)
        try:
            app, _runtime = create_app(settings)
        except RegistryUnavailable as exc:  # registering the event schemas: the restart retries
            fail("worker", str(exc), UNREACHABLE)
    from stream_app.live.worker import run_worker
    from stream_app.ops.hotpath import describe

    # after the checks above, each of which reports a problem as the command's only line
    logging.getLogger("stream_app.worker").info("per-record hot path: %s", describe())
    run_worker(app, settings.logLevel, log_config)


@main.command()
@config_option
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
def replay(config: str | None, from_offsets: tuple[str, ...], to_offsets: tuple[str, ...], from_time: str | None,
           to_time: str | None, window: str | None, partitions: str | None, out: str | None, allow_partial: bool,
           verify: bool) -> None:
    """Regenerate (or --verify) files from a bounded range, byte-identical to the live run."""
    from stream_app.replay.cli import ReplayRequest, parse_offsets, parse_time, run_replay
    from stream_app.replay.reader import RangeRequestError, ReplayError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with reported("replay"):
        settings = _load_checked(config) if out is None and not verify else settings_from(config)
    try:
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
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        with reported("replay"):
            report = run_replay(settings, request)
    except RangeRequestError as exc:
        raise click.UsageError(str(exc)) from None
    except ReplayError as exc:
        fail("replay", str(exc), DATA)
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


@main.command("locate")
@config_option
@click.option("--offset", "offsets", multiple=True, metavar="TOPIC:PARTITION:OFFSET",
              help="The record at this offset of an input topic (repeatable).")
@click.option("--key", metavar="FIELD=VALUE", help="The records whose FIELD reads VALUE (needs --from-time and --to-time).")
@click.option("--from-time", help="With --key: read the records with a Kafka timestamp at or after this time (ISO-8601).")
@click.option("--to-time", help="With --key: ... and before this time (ISO-8601); only that range is read.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record instead of a line of text.")
def locate_command(config: str | None, offsets: tuple[str, ...], key: str | None, from_time: str | None,
                   to_time: str | None, as_json: bool) -> None:
    """Find the file of a record: name, part, line or element, location and window; or its dead-letter reason."""
    import orjson

    from stream_app.replay.cli import parse_time
    from stream_app.tools.locate import describe, locate, locate_by_key, parse_offset

    if bool(offsets) == bool(key):
        raise click.UsageError("give --offset TOPIC:PARTITION:OFFSET, or --key FIELD=VALUE")
    try:
        coordinates = [parse_offset(text) for text in offsets]
        if key is not None:
            field, sep, value = key.partition("=")
            if not sep or not field:
                raise ValueError(f"--key takes FIELD=VALUE, got {key!r}")
            if from_time is None or to_time is None:
                raise ValueError("--key reads a bounded range: give --from-time and --to-time")
            span = (parse_time(from_time), parse_time(to_time))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    from stream_app.replay.reader import ReplayError

    with reported("locate"):
        settings = settings_from(config)
        try:
            found = locate(settings, coordinates) if key is None else locate_by_key(settings, field, value, *span)
        except ReplayError as exc:  # a part's recorded offsets are no longer readable (retention)
            fail("locate", str(exc), DATA)
    for row in found:
        click.echo(orjson.dumps(row).decode() if as_json else describe(row))
    if key is not None and not found:
        click.echo(f"no record with {key} in that range", err=True)


@main.command("deliveries")
@config_option
@click.option("--status", "statuses", multiple=True, type=click.Choice(["pending", "failed", "delivered"]),
              help="Only files in this status (repeatable).")
@click.option("--destination", help="Only this destination (with --redeliver: deliver to it only).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file and destination.")
@click.option("--redeliver", "redeliver_file", metavar="FILE",
              help="Deliver this file again now, from the sink copy (never overwrites a different file).")
def deliveries_command(config: str | None, statuses: tuple[str, ...], destination: str | None, as_json: bool,
                       redeliver_file: str | None) -> None:
    """List pending, failed and delivered files per destination, from the journal; or re-deliver one."""
    from stream_app.tools.deliveries import RedeliveryError, list_deliveries, run_redelivery

    with reported("deliveries"):
        settings = settings_from(config)
        try:
            code = (list_deliveries(settings, statuses, destination, as_json, click.echo) if redeliver_file is None
                    else run_redelivery(settings, redeliver_file, destination, click.echo))
        except RedeliveryError as exc:
            fail("deliveries", str(exc), USAGE)
    if code:
        sys.exit(code)


@main.command("journal")
@config_option
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only these event types (repeatable).")
@click.option("--file-key", help="Only the events of this file key.")
@click.option("--window", help="Only the events of the file windows starting at this time (ISO-8601).")
@click.option("--since", help="Only events that occurred at or after this time (ISO-8601).")
@click.option("--until", help="Only events that occurred before this time (ISO-8601).")
@click.option("--follow", is_flag=True, help="Keep reading new events (Ctrl-C to stop).")
@click.option("--summary", is_flag=True, help="One line per file window: files, records, bytes, failures.")
def journal(config: str | None, types: tuple[str, ...], file_key: str | None, window: str | None, since: str | None,
            until: str | None, follow: bool, summary: bool) -> None:
    """Read the journal topic: one JSON object per event (or per window with --summary)."""
    import orjson

    from stream_app.replay.cli import parse_time
    from stream_app.tools.events import JournalFilter, journal_events, plain, window_summary

    if summary and follow:
        raise click.UsageError("--summary reads to the end; it does not combine with --follow")
    try:
        selection = JournalFilter(types, file_key, parse_time(window) if window else None,
                                  parse_time(since) if since else None, parse_time(until) if until else None)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with reported("journal"):
        settings = settings_from(config)
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
@config_option
@click.option("--reason", "reasons", multiple=True, metavar="REASON", help="Only these reasons (repeatable).")
@click.option("--list", "listing", is_flag=True, help="One JSON object per dead letter (coordinates, reason, "
                                                        "value length and sha256), instead of counts by reason.")
@click.option("--show-values", is_flag=True, help="With --list on a terminal: the original values too.")
@click.option("--redrive", is_flag=True, help="Send the selected dead letters back to their source topic, once each.")
@click.option("--to-topic", help="With --redrive: send them to this topic instead.")
def dead_letters_command(config: str | None, reasons: tuple[str, ...], listing: bool, show_values: bool, redrive: bool,
                         to_topic: str | None) -> None:
    """Count, list or re-drive the dead letters (record contents only with --show-values on a terminal)."""
    import orjson

    from stream_app.tools.events import dead_letters
    from stream_app.tools.events import redrive as redrive_letters

    if show_values and not sys.stdout.isatty():
        raise click.UsageError("--show-values prints record contents; only to a terminal")
    with reported("dead-letters"):
        settings = settings_from(config)
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
@click.option("--records", default=20000, show_default=True, help="Matched records to produce.")
@click.option("--seed", default=42, show_default=True, help="Seed of the generated sample (same seed, same records).")
@click.option("--partitions", default=3, show_default=True, help="Partitions of the topic when it is created.")
@click.option("--topic", default="matched-records", show_default=True, help="Topic to produce to (created if missing).")
@click.option("--journal-topic", default="clearing-journal", show_default=True,
              help="The worker's journal topic, created if missing (the worker waits for it).")
@click.option("--dead-letter-topic", default="clearing-dead-letter", show_default=True,
              help="The worker's dead-letter topic, created if missing (the worker waits for it).")
def produce_demo(records: int, seed: int, partitions: int, topic: str, journal_topic: str,
                 dead_letter_topic: str) -> None:
    """Produce the seeded sample to KAFKA_BOOTSTRAP_SERVERS (registering the schema when
    SCHEMA_REGISTRY_URL is set) — the demo producer of docker-compose.yml."""
    from stream_app.tools.broker import create_topics
    from stream_app.tools.demo import produce_sample

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        fail("produce-demo", "KAFKA_BOOTSTRAP_SERVERS is not set", CONFIG)
    with reported("produce-demo"):
        create_topics(bootstrap, {topic: partitions, journal_topic: 1, dead_letter_topic: 1})
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
    from stream_app.tools.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None
    from stream_app.tools.broker import EmbeddedBrokerMissing

    try:
        result = run_demo(records, Path(out), seed, partitions, bootstrap, example)
    except EmbeddedBrokerMissing as exc:
        fail("demo", str(exc), CONFIG)
    click.echo(f"{len(result.files)} clearing files, {result.records} records, in {result.out_dir.resolve()}")
    for event in result.files:
        click.echo(f"  {event['file_name']:<40} {event['records']:>6} records {event['bytes']:>9} bytes")
    counts = ", ".join(f"{k}={v}" for k, v in sorted(result.journal_counts.items()))
    click.echo(f"journal events: {counts}")
    click.echo(f"dead letters: {result.dead_letters} (the sample includes deliberately malformed records)")


if __name__ == "__main__":
    main()
