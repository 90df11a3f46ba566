"""The demo is the README's first command: it must work and be reproducible byte for byte."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from stream_app.cli import main
from stream_app.tools.demo import run_demo

pytestmark = pytest.mark.e2e


def test_demo_twice_with_the_same_seed_gives_identical_files(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--records", "600", "--out", str(tmp_path / "a"), "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert "dead letters: 2" in result.output and "clearing files, 600 records" in result.output
    second = run_demo(600, tmp_path / "b", seed=5)
    names = sorted(p.name for p in (tmp_path / "a").glob("CLR_*"))
    # one business file per 6-hour clearing cycle across the three partitions
    assert names == sorted(p.name for p in (tmp_path / "b").glob("CLR_*")) and len(names) == 5
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert sum(f["records"] for f in second.files) == 600
    sample = (tmp_path / "a" / names[0]).read_text()
    assert sample.startswith("HDR|CLEARING|V02|ACQ0000001|SCHEME0001|") and "\nDTL|0000001|" in sample
    assert "\nTOT|EUR|" in sample and "\nTRL|" in sample


def test_business_files_do_not_depend_on_the_partition_count(tmp_path):
    one = run_demo(600, tmp_path / "one", seed=5, partitions=1)
    four = run_demo(600, tmp_path / "four", seed=5, partitions=4)
    files = {p.name: p.read_bytes() for p in (tmp_path / "one").glob("CLR_*")}
    assert len(files) == 5 and files == {p.name: p.read_bytes() for p in (tmp_path / "four").glob("CLR_*")}
    assert one.dead_letters == four.dead_letters == 2


def test_the_demo_through_kafka_bootstrap_servers_on_apache_kafka_gives_the_same_files(apache_kafka, tmp_path):
    """The README's demo against a real cluster (KAFKA_BOOTSTRAP_SERVERS: Apache Kafka, no quirk
    workaround) writes the same bytes as on the embedded broker."""
    from tests.apache_kafka import KAFKA_VERSION

    assert apache_kafka.version() == KAFKA_VERSION
    result = CliRunner().invoke(main, ["demo", "--records", "600", "--out", str(tmp_path / "apache"), "--seed", "5"],
                                env={"KAFKA_BOOTSTRAP_SERVERS": apache_kafka.bootstrap})
    assert result.exit_code == 0, result.output
    assert "dead letters: 2" in result.output and "clearing files, 600 records" in result.output
    run_demo(600, tmp_path / "embedded", seed=5)
    names = sorted(p.name for p in (tmp_path / "embedded").glob("CLR_*"))
    assert len(names) == 5 and names == sorted(p.name for p in (tmp_path / "apache").glob("CLR_*"))
    for name in names:
        assert (tmp_path / "apache" / name).read_bytes() == (tmp_path / "embedded" / name).read_bytes()
