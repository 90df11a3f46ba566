"""Every command reports a broker or credential problem in one line with its own exit code
(stream_app/ops/problems.py, sysexits.h): an unreachable broker (75), credentials missing or
refused (77), a missing topic (69); never a traceback.  Usage errors exit 64, configuration
errors 78; the configuration comes from --config, STREAM_APP_CONFIG or the default path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from stream_app.ops.problems import CONFIG, CREDENTIALS, MISSING_TOPIC, UNREACHABLE, classify
from stream_app.tools.broker import free_port
from tests.helpers import config_dict, write_config

# (arguments, extra environment) of each command that talks to the broker
COMMANDS: list[tuple[list[str], dict[str, str]]] = [
    (["replay", "--out", "{tmp}/replayed"], {}),
    (["replay", "--verify"], {}),
    (["journal"], {}),
    (["journal", "--summary"], {}),
    (["dead-letters"], {}),
    (["dead-letters", "--list"], {}),
    (["dead-letters", "--redrive"], {}),
    (["locate", "--offset", "in:0:0"], {}),
    (["deliveries"], {}),
]


def _run_all(commands: list[list[str]], env: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """Run the commands side by side (each waits out its client's timeout): (exit code, stderr)."""
    procs = [subprocess.Popen([sys.executable, "-m", "stream_app.cli", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**os.environ, **(env or {})}) for args in commands]
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        results.append((proc.returncode, err.decode()))
    return results


def _config(tmp_path: Path, bootstrap: str, **kafka: object) -> Path:
    data = config_dict(tmp_path / "out", bootstrap=bootstrap)
    (tmp_path / "out").mkdir(exist_ok=True)
    data["kafka"].update(kafka)
    return write_config(tmp_path / "c.yaml", data)


def _commands(config: Path, tmp_path: Path) -> list[list[str]]:
    return [[args[0], "--config", str(config), *(a.format(tmp=tmp_path) for a in args[1:])] for args, _ in COMMANDS]


def _assert_one_line(results: list[tuple[int, str]], commands: list[list[str]], code: int, says: str) -> None:
    for (rc, err), args in zip(results, commands):
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("%")]
        assert rc == code, f"{args}: exit {rc}, stderr {err[-800:]}"
        assert "Traceback" not in err, f"{args}: {err[-800:]}"
        assert len(lines) == 1 and lines[0].startswith(f"stream-app {args[0]}: ") and says in lines[0], (args, lines)


@pytest.mark.e2e
def test_every_command_reports_an_unreachable_broker_in_one_line(tmp_path):
    config = _config(tmp_path, f"127.0.0.1:{free_port()}")
    commands = _commands(config, tmp_path) + [["produce-demo", "--records", "5"]]
    results = _run_all(commands, env={"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})
    _assert_one_line(results, commands, UNREACHABLE, "broker unreachable")


def test_every_command_reports_missing_credentials_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NO_SUCH_SECRET"}
    config = _config(tmp_path, "127.0.0.1:9", security={
        "protocol": "SASL_PLAINTEXT", "saslMechanism": "SCRAM-SHA-512", "username": "clearing",
        "passwordEnv": "NO_SUCH_SECRET"})
    commands = _commands(config, tmp_path)
    results = _run_all(commands, env)
    _assert_one_line(results, commands, CREDENTIALS, "credentials missing: kafka.security.passwordEnv")


@pytest.mark.e2e
def test_every_command_reports_a_missing_topic_in_one_line(kafka_bootstrap, tmp_path):
    data = config_dict(tmp_path / "out", bootstrap=kafka_bootstrap, topic=f"absent-{tmp_path.name}")
    (tmp_path / "out").mkdir()
    data["kafka"].update(journalTopic=f"absent-journal-{tmp_path.name}", deadLetterTopic=f"absent-dead-{tmp_path.name}")
    config = write_config(tmp_path / "c.yaml", data)
    commands = _commands(config, tmp_path)
    _assert_one_line(_run_all(commands), commands, MISSING_TOPIC, "does not exist")


@pytest.mark.parametrize("code, expected", [
    (KafkaError._TRANSPORT, UNREACHABLE), (KafkaError._ALL_BROKERS_DOWN, UNREACHABLE),
    (KafkaError._TIMED_OUT, UNREACHABLE), (KafkaError._RESOLVE, UNREACHABLE),
    (KafkaError.SASL_AUTHENTICATION_FAILED, CREDENTIALS), (KafkaError._AUTHENTICATION, CREDENTIALS),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, CREDENTIALS), (KafkaError.GROUP_AUTHORIZATION_FAILED, CREDENTIALS),
    (KafkaError._SSL, CREDENTIALS), (KafkaError.UNKNOWN_TOPIC_OR_PART, MISSING_TOPIC),
    (KafkaError._UNKNOWN_TOPIC, MISSING_TOPIC)])
def test_broker_errors_are_classified_by_what_the_user_must_fix(code, expected):
    problem = classify(KafkaException(KafkaError(code, "as the client said")), "reading topic t")
    assert problem.exit_code == expected and str(problem).startswith("reading topic t: ")
    assert "as the client said" in str(problem)


def _cli(args: list[str], env: dict[str, str] | None = None):
    from click.testing import CliRunner

    from stream_app.cli import main

    return CliRunner().invoke(main, args, env=env)


def test_usage_and_configuration_errors_have_their_own_exit_codes(tmp_path):
    from stream_app.ops.problems import CONFIG, USAGE

    good = _config(tmp_path, "127.0.0.1:1")
    assert _cli(["replay", "--no-such-option"]).exit_code == USAGE
    assert _cli(["no-such-command"]).exit_code == USAGE
    assert _cli(["replay", "--config", str(good), "--from-offset", "zero"]).exit_code == USAGE
    assert _cli(["journal", "--config", str(good), "--summary", "--follow"]).exit_code == USAGE
    missing = _cli(["config", "--config", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == CONFIG and "cannot read config file" in missing.output
    (tmp_path / "bad.yaml").write_text("kafka: {bootstrapServers: x, inputTopics: [t], typo: 1}\n")
    bad = _cli(["config", "--config", str(tmp_path / "bad.yaml")])
    assert bad.exit_code == CONFIG and "typo" in bad.output


def test_the_configuration_comes_from_the_environment_or_the_default_path(tmp_path, monkeypatch):
    import stream_app.cli as cli
    from stream_app.ops.problems import USAGE

    config = _config(tmp_path, "kafka.example:9092")
    monkeypatch.delenv("STREAM_APP_CONFIG", raising=False)
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", tmp_path / "etc" / "config.yaml")
    nothing = _cli(["config"])
    assert nothing.exit_code == USAGE and "STREAM_APP_CONFIG" in nothing.output
    from_env = _cli(["config"], env={"STREAM_APP_CONFIG": str(config)})
    assert from_env.exit_code == 0 and "kafka.example:9092" in from_env.output
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "config.yaml").write_text(config.read_text().replace("kafka.example", "default.example"))
    from_default = _cli(["config"])
    assert from_default.exit_code == 0 and "default.example:9092" in from_default.output
    # the option wins over the variable, the variable over the default path
    assert "kafka.example:9092" in _cli(["config"], env={"STREAM_APP_CONFIG": str(config)}).output


def test_version_and_help_on_every_option():
    import click

    from stream_app.cli import main

    result = _cli(["--version"])
    from importlib.metadata import version

    assert result.exit_code == 0 and result.output.strip() == f"stream-app {version('stream-app')}"
    for name, command in main.commands.items():
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"stream-app {name} {param.opts[0]} has no help text"


def test_retriable_kafka_errors_are_retried_and_others_are_not():
    from stream_app.ops.problems import retried

    calls: list[int] = []

    def coordinator_moving() -> str:
        calls.append(1)
        if len(calls) < 3:
            # as librdkafka raises it from committed(): not flagged retriable
            raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR, "Not coordinator"))
        return "committed"

    assert retried(coordinator_moving, first_delay_s=0.01) == "committed" and len(calls) == 3
    refused = KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "denied"))
    with pytest.raises(KafkaException):
        retried(lambda: (_ for _ in ()).throw(refused), first_delay_s=0.01)


def test_the_worker_waits_for_its_journal_and_dead_letter_topics_naming_the_key(kafka_bootstrap, tmp_path):
    """A cluster that does not create topics on first use (Apache Kafka's usual setting) would
    refuse the first journal event mid-run: the start waits for them like for the input topics."""
    import uuid

    from stream_app.config import load_config
    from stream_app.live.startup import broker_reachable
    from stream_app.tools.broker import create_topics

    uid = uuid.uuid4().hex[:6]
    create_topics(kafka_bootstrap, {f"in-{uid}": 1})
    data = config_dict(tmp_path / "out", bootstrap=kafka_bootstrap, topic=f"in-{uid}")
    data["kafka"].update(journalTopic=f"journal-{uid}", deadLetterTopic=f"dead-{uid}")
    (tmp_path / "out").mkdir()
    settings = load_config(write_config(tmp_path / "c.yaml", data))
    problem = broker_reachable(settings)
    assert problem is not None and problem.exit_code == MISSING_TOPIC
    assert str(problem) == f"topic journal-{uid} does not exist (kafka.journalTopic)"
    create_topics(kafka_bootstrap, {f"journal-{uid}": 1})
    assert str(broker_reachable(settings)) == f"topic dead-{uid} does not exist (kafka.deadLetterTopic)"
    create_topics(kafka_bootstrap, {f"dead-{uid}": 1})
    assert broker_reachable(settings) is None


@pytest.mark.e2e
def test_an_input_topic_with_more_partitions_than_the_config_says_stops_the_worker_naming_the_key(
        kafka_bootstrap, tmp_path):
    """The worker's checkpoint tables have kafka.topicPartitions changelog partitions: an input
    partition beyond them could never be checkpointed (Faust's producer would refuse the send
    and crash the worker mid-run).  The start refuses it at once, as a configuration error."""
    import uuid

    from stream_app.tools.broker import create_topics

    uid = uuid.uuid4().hex[:6]
    create_topics(kafka_bootstrap, {f"in-{uid}": 3, f"journal-{uid}": 1, f"dead-{uid}": 1})
    data = config_dict(tmp_path / "out", bootstrap=kafka_bootstrap, topic=f"in-{uid}")
    data["kafka"].update(journalTopic=f"journal-{uid}", deadLetterTopic=f"dead-{uid}", topicPartitions=2)
    (tmp_path / "out").mkdir()
    config = write_config(tmp_path / "c.yaml", data)
    ((rc, err),) = _run_all([["worker", "--config", str(config)]])
    _assert_one_line([(rc, err)], [["worker"]], CONFIG, f"input topic in-{uid} has 3 partitions, more than "
                                                        "kafka.topicPartitions (2); set it to 3")
