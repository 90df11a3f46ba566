"""Configuration errors name the bad key; preflight catches what can be known before data."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from stream_app.cli import main
from stream_app.config import ConfigError, load_config, parse_config
from stream_app.ops.problems import CONFIG
from stream_app.tools.preflight import run_preflight
from tests.helpers import config_dict, write_config


def test_unknown_key_is_named(tmp_path):
    data = config_dict(tmp_path)
    data["worker"]["maxRecordPerFile"] = 10
    with pytest.raises(ConfigError, match=r"worker\.maxRecordPerFile: unknown key"):
        parse_config(data)


def test_missing_and_invalid_keys_are_named(tmp_path):
    data = config_dict(tmp_path)
    del data["worker"]["recordTemplate"]
    with pytest.raises(ConfigError, match="worker.recordTemplate is required with mode: template"):
        parse_config(data)
    data = config_dict(tmp_path, maxRecordsPerFile=0)
    del data["kafka"]["inputTopics"]
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "worker.maxRecordsPerFile: Input should be greater than or equal to 1" in str(err.value)
    assert "kafka.inputTopics: Field required" in str(err.value)


def test_buffer_must_hold_a_file(tmp_path):
    with pytest.raises(ConfigError, match="maxBufferedRecords"):
        parse_config(config_dict(tmp_path, maxRecordsPerFile=100, maxBufferedRecords=10))


def test_environment_references(tmp_path, monkeypatch):
    data = config_dict(tmp_path, bootstrap="${TEST_BOOTSTRAP}")
    with pytest.raises(ConfigError, match=r"kafka.bootstrapServers: environment variable TEST_BOOTSTRAP"):
        parse_config(data)
    monkeypatch.setenv("TEST_BOOTSTRAP", "kafka-1:9092")
    assert parse_config(data).kafka.bootstrapServers == "kafka-1:9092"


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    data = config_dict(Path("out"))
    cfg = write_config(tmp_path / "c.yaml", data)
    assert load_config(cfg).sink.localTargetDir == str(tmp_path / "out")


def test_preflight_passes_on_a_good_config(tmp_path):
    checked = run_preflight(parse_config(config_dict(tmp_path)))
    assert "templates render a sample record of every input schema" in checked


@pytest.mark.parametrize("key, value, message", [
    ("recordTemplate", "{{ record.amout }}", "worker.recordTemplate"),
    ("headerTemplate", "{% if %}", "worker.headerTemplate"),
    ("fileNameTemplate", "F_{{ part }}.txt", "worker.fileNameTemplate: files that differ only in partition"),
    ("fileNameTemplate", "F_{{ partition }}_{{ part }}.txt", "differ only in window"),
    ("fileNameTemplate", "../F_{{ partition }}_{{ part }}_{{ window_start | ts }}.txt", "worker.fileNameTemplate"),
    ("groupBy", ["acquirer_id"], "group.acquirer_id"),
    ("groupBy", ["no_such_field"], "worker.groupBy: field 'no_such_field'"),
])
def test_preflight_names_the_bad_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        run_preflight(parse_config(config_dict(tmp_path, **{key: value})))


def test_preflight_checks_the_event_time_field_and_target_dir(tmp_path):
    data = config_dict(tmp_path)
    data["input"] = {"eventTimeField": "settled_at"}
    with pytest.raises(ConfigError, match="input.eventTimeField"):
        run_preflight(parse_config(data))
    with pytest.raises(ConfigError, match="sink.localTargetDir"):
        run_preflight(parse_config(config_dict(tmp_path / "missing")))


def test_preflight_command_exit_codes(tmp_path):
    runner = CliRunner()
    good = write_config(tmp_path / "good.yaml", config_dict(tmp_path))
    result = runner.invoke(main, ["preflight", "--config", str(good)])
    assert result.exit_code == 0, result.output
    bad_data = config_dict(tmp_path)
    bad_data["sink"]["localTargetDirectory"] = "x"
    bad = write_config(tmp_path / "bad.yaml", bad_data)
    result = runner.invoke(main, ["preflight", "--config", str(bad)])
    assert result.exit_code == CONFIG
    assert "sink.localTargetDirectory: unknown key" in result.output


def test_streaming_preflight_rejects_templates_that_need_every_record(tmp_path):
    data = config_dict(tmp_path, streamingAppendEnabled=True, footerTemplate="{{ records | length }}\n")
    with pytest.raises(ConfigError, match="worker.footerTemplate.*records"):
        run_preflight(parse_config(data))
    run_preflight(parse_config(config_dict(tmp_path, streamingAppendEnabled=True)))


def test_streaming_window_keys(tmp_path):
    data = config_dict(tmp_path, streamingAppendEnabled=True, streamingWindowMs=7_200_000)
    del data["worker"]["window"]["sizeMs"]
    assert parse_config(data).worker.window_size_ms == 7_200_000
    with pytest.raises(ConfigError, match="disagree"):
        parse_config(config_dict(tmp_path, streamingAppendEnabled=True, streamingWindowMs=7_200_000))
    with pytest.raises(ConfigError, match="applies only with"):
        parse_config(config_dict(tmp_path, streamingWindowMs=7_200_000))


def test_gzip_needs_gz_names(tmp_path):
    data = config_dict(tmp_path)
    data["sink"]["compression"] = "gzip"
    with pytest.raises(ConfigError, match="must end in .gz"):
        run_preflight(parse_config(data))


def test_json_log_lines_carry_the_file_window_as_correlation_id():
    import io
    import json
    import logging

    from stream_app.ops.logging import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("file %s failed", "in/0/0", extra={"file_key": "in/0/0", "part": 1})
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "file in/0/0 failed" and entry["file_key"] == "in/0/0" and entry["part"] == 1
    assert entry["level"] == "WARNING" and entry["ts"].endswith("+00:00")


def test_preflight_renders_json_templates_against_the_sample_file_or_says_it_cannot(tmp_path):
    from click.testing import CliRunner

    from stream_app.cli import main
    from tests.helpers import write_config

    data = config_dict(tmp_path, recordTemplate="D|{{ record.record_id }}|{{ record.amount | money }}|"
                                                 "{{ record.no_such_field.x }}\n")
    data["input"] = {"format": "json"}
    with pytest.raises(ConfigError, match="input.sampleFile: headerTemplate, recordTemplate and footerTemplate "
                                          "cannot be rendered"):
        run_preflight(parse_config(data))
    checked = run_preflight(parse_config(data), require_samples=False)  # the worker at start, --skip-render
    assert any(item.startswith("NOT CHECKED") for item in checked)
    config = write_config(tmp_path / "json.yaml", data)
    result = CliRunner().invoke(main, ["preflight", "--config", str(config), "--skip-render"])
    assert result.exit_code == 0 and "NOT CHECKED" in result.output
    # with a sample file the templates are rendered: the undefined field is found before any data
    (tmp_path / "samples.jsonl").write_text(
        '{"record_id": "r1", "matched_at": "2026-03-02T01:00:00Z", "amount": "10.00", "currency": "EUR"}\n')
    data["input"]["sampleFile"] = "samples.jsonl"
    result = CliRunner().invoke(main, ["preflight", "--config", str(write_config(tmp_path / "json.yaml", data))])
    assert result.exit_code == CONFIG and "recordTemplate" in result.output and "no_such_field" in result.output
    data["worker"]["recordTemplate"] = "D|{{ record.record_id }}|{{ record.amount | money }}\n"
    result = CliRunner().invoke(main, ["preflight", "--config", str(write_config(tmp_path / "json.yaml", data))])
    assert result.exit_code == 0 and "ok  templates render a sample record" in result.output, result.output
    (tmp_path / "samples.jsonl").write_text('{"record_id": "r1", "amount": "NaN", "matched_at": 1}\n')
    result = CliRunner().invoke(main, ["preflight", "--config", str(write_config(tmp_path / "json.yaml", data))])
    assert result.exit_code == CONFIG and "samples.jsonl line 1: BAD_DECIMAL" in result.output
