"""A realistic sample of matched card-clearing records, generated from a seed.

Same seed and count -> same records in the same partitions and order -> byte-identical files.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from stream_app.codecs.avro import encode_confluent, load_schema
from stream_app.resources import AVRO_DIR, EXAMPLES_DIR, SCHEMAS_DIR

MATCHED_RECORD_SCHEMA_ID = 1
DEMO_START = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)

_MERCHANTS = [
    ("M100234", "CORNER BAKERY LTD", "5462", "GB"),
    ("M204511", "CITY FUEL STATION", "5541", "DE"),
    ("M309872", "NORDIC BOOKS AB", "5942", "SE"),
    ("M411290", "HOTEL LUMIERE", "7011", "FR"),
    ("M512003", "METRO GROCERY", "5411", "NL"),
    ("M618440", "SKYLINE AIRWAYS", "4511", "IE"),
    ("M720981", "PHARMA PLUS", "5912", "ES"),
    ("M834117", "TECH HAVEN ONLINE", "5732", "DE"),
]
_CURRENCY_BY_COUNTRY = {"GB": "GBP", "SE": "SEK"}
_SCHEMES = [("VISA", "4"), ("MASTERCARD", "5")]
_ACQUIRERS = ["ACQ-000451", "ACQ-001877", "ACQ-009320"]
_ISSUERS = ["ISS-424242", "ISS-535110", "ISS-601100", "ISS-377412"]
# Settlement parties (ISO 20022 packs): the BIC of each acquirer and issuer, the issuer's country
# for its cardholders' IBANs, and cardholder names (absent on a quarter of the records).
_ACQUIRER_BIC = {"ACQ-000451": "BARCGB22", "ACQ-001877": "COBADEFFXXX", "ACQ-009320": "NDEASESS"}
_ISSUER_BANK = {"ISS-424242": ("DEUTDEFF", "DE"), "ISS-535110": ("INGBNL2A", "NL"),
                "ISS-601100": ("BNPAFRPP", "FR"), "ISS-377412": ("AIBKIE2D", "IE")}
_CARDHOLDERS = ["ANNA SCHMIDT", "JAN DE VRIES", "CLAIRE DUBOIS", "SEAN MURPHY", "LENA BERG", "OMAR HADDAD"]


def iban_check_digits(country: str, bban: str) -> str:
    """ISO 13616 check digits: 98 minus the mod-97 of BBAN + country + 00 (letters as 10..35)."""
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{98 - int(digits) % 97:02d}"


def is_valid_iban(iban: str) -> bool:
    """The ISO 13616 mod-97 check (what a receiving bank's validator does first)."""
    moved = iban[4:] + iban[:4]
    return iban[:2].isalpha() and iban[2:4].isdigit() and int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _bban(country: str, rng: random.Random) -> str:
    """A national account number of the country's format, national check digits included."""
    def digits(n: int) -> str:
        return "".join(str(rng.randint(0, 9)) for _ in range(n))

    if country == "DE":
        return digits(8) + digits(10)
    if country in ("GB", "IE"):
        return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4)) + digits(14)
    if country == "NL":
        return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4)) + digits(10)
    if country == "SE":
        return digits(20)
    if country == "FR":  # bank, branch, account, then the RIB key
        bank, branch, account = digits(5), digits(5), digits(11)
        return bank + branch + account + f"{97 - (89 * int(bank) + 15 * int(branch) + 3 * int(account)) % 97:02d}"
    if country == "ES":  # bank, branch, two control digits, account
        bank_branch, account = digits(8), digits(10)

        def control(text: str) -> int:
            weights = [1, 2, 4, 8, 5, 10, 9, 7, 3, 6]
            value = 11 - sum(int(c) * w for c, w in zip(text.rjust(10, "0"), weights)) % 11
            return {10: 1, 11: 0}.get(value, value)

        return bank_branch + f"{control(bank_branch)}{control(account)}" + account
    raise ValueError(f"no BBAN format for {country}")


def iban(country: str, rng: random.Random) -> str:
    bban = _bban(country, rng)
    return country + iban_check_digits(country, bban) + bban


# One settlement account per merchant, fixed by the merchant id.
_MERCHANT_IBAN = {merchant_id: iban(country, random.Random(merchant_id)) for merchant_id, _, _, country in _MERCHANTS}


def matched_records(count: int, seed: int, span_hours: float = 26.0, start: datetime = DEMO_START) -> Iterator[dict]:
    """Records with event times rising through ``span_hours`` from ``start`` (small jitter)."""
    rng = random.Random(seed)
    parties = random.Random(f"parties-{seed}")  # its own stream: the other fields stay as they were
    step_ms = span_hours * 3600 * 1000 / max(count, 1)
    for i in range(count):
        merchant_id, merchant_name, mcc, country = rng.choice(_MERCHANTS)
        scheme, pan_prefix = rng.choice(_SCHEMES)
        jitter = rng.randint(-120_000, 120_000)  # up to 2 minutes out of order
        matched_at = start + timedelta(milliseconds=max(0, int(i * step_ms) + jitter))
        tx_type = rng.choices(["PURCHASE", "REFUND", "CASH_ADVANCE", "REVERSAL"], [90, 6, 2, 2])[0]
        amount = Decimal(rng.randint(100, 250_000)).scaleb(-2)
        record: dict[str, Any] = {
            "record_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "match_id": f"MT{rng.getrandbits(40):012d}",
            "matched_at": matched_at,
            "transaction_at": matched_at - timedelta(seconds=rng.randint(5, 36 * 3600)),
            "amount": amount,
            "currency": _CURRENCY_BY_COUNTRY.get(country, "EUR"),
            "transaction_type": tx_type,
            "scheme": scheme,
            "acquirer_id": rng.choice(_ACQUIRERS),
            "issuer_id": rng.choice(_ISSUERS),
            "merchant_id": merchant_id,
            "merchant_name": merchant_name,
            "merchant_category_code": mcc,
            "merchant_country": country,
            "terminal_id": None if rng.random() < 0.2 else f"T{rng.randint(0, 99_999_999):08d}",
            "masked_pan": f"{pan_prefix}{rng.randint(0, 99_999):05d}******{rng.randint(0, 9999):04d}",
            "auth_code": f"{rng.randint(0, 999_999):06d}",
            "arn": "".join(str(rng.randint(0, 9)) for _ in range(23)),
            "stan": f"{rng.randint(0, 999_999):06d}",
        }
        issuer_bic, issuer_country = _ISSUER_BANK[record["issuer_id"]]
        record.update({
            "debtor_name": None if parties.random() < 0.25 else parties.choice(_CARDHOLDERS),
            "debtor_iban": iban(issuer_country, parties),
            "debtor_bic": issuer_bic,
            "creditor_iban": _MERCHANT_IBAN[merchant_id],
            "creditor_bic": _ACQUIRER_BIC[record["acquirer_id"]],
        })
        yield record


def encoded_matched_records(count: int, seed: int, schema_id: int = MATCHED_RECORD_SCHEMA_ID) -> Iterator[bytes]:
    schema = load_schema(AVRO_DIR / "matched_record.avsc")
    for record in matched_records(count, seed):
        yield encode_confluent(schema_id, schema, record)


def register_schema(registry_url: str, subject: str) -> int:
    """Register the matched-record schema with a Confluent-API registry; returns its id."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    schema = (AVRO_DIR / "matched_record.avsc").read_text(encoding="utf-8")
    return int(SchemaRegistryClient({"url": registry_url}).register_schema(subject, Schema(schema, "AVRO")))


def produce_sample(bootstrap: str, topic: str, records: int, seed: int, partitions: int,
                   registry_url: str | None = None) -> int:
    from stream_app.tools.topics import produce

    schema_id = register_schema(registry_url, f"{topic}-value") if registry_url else MATCHED_RECORD_SCHEMA_ID
    return produce(bootstrap, topic, ((i % partitions, None, value) for i, value in
                                      enumerate(encoded_matched_records(records, seed, schema_id))))


def example_names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES_DIR.glob("*.yaml"))


def demo_config(example: str, bootstrap: str, topics: tuple[str, str, str], partitions: int, out_dir: Path,
                records: int) -> dict:
    """An example worker config pointed at the demo's broker, topics and output directory."""
    data = yaml.safe_load((EXAMPLES_DIR / f"{example}.yaml").read_text(encoding="utf-8"))
    topic, journal, dead = topics
    data["appId"] = f"stream-app-demo-{uuid.uuid4().hex[:8]}"
    data["workerId"] = "demo-worker-1"
    data["kafka"].update(bootstrapServers=bootstrap, inputTopics=[topic], journalTopic=journal,
                         deadLetterTopic=dead, topicPartitions=partitions)
    data["input"]["avroSchemas"] = {MATCHED_RECORD_SCHEMA_ID: str(AVRO_DIR / "matched_record.avsc")}
    data["schemasDir"] = str(SCHEMAS_DIR)
    data["worker"]["window"]["idleTimeoutMs"] = 1500  # close the last windows soon after the sample ends
    data["sink"]["localTargetDir"] = str(out_dir.resolve())
    return data


def spawn_worker(config_path: str, log_path: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``stream-app worker`` as a child process (the demo and the e2e tests use this)."""
    log_file = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "stream_app.cli", "worker", "--config", config_path],
        stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})},
    )


def stop_worker(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@dataclass
class DemoResult:
    out_dir: Path
    files: list[dict]
    journal_counts: dict[str, int]
    dead_letters: int
    records: int


def run_demo(records: int, out_dir: Path, seed: int, partitions: int = 3, bootstrap: str | None = None,
             example: str = "template-clearing", timeout_s: float = 240.0) -> DemoResult:
    from stream_app.tools.broker import EmbeddedBroker, create_topics
    from stream_app.tools.topics import produce, read_dead_letters, read_journal

    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="stream-app-demo-"))
    broker = None
    if bootstrap is None:
        broker = EmbeddedBroker(log_file=work / "broker.log")
        bootstrap = broker.start()
    topic, journal, dead = "matched-records", "clearing-journal", "clearing-dead-letter"
    if broker is None:  # a shared cluster: fresh topics so that earlier runs do not leak in
        suffix = uuid.uuid4().hex[:8]
        topic, journal, dead = f"{topic}-{suffix}", f"{journal}-{suffix}", f"{dead}-{suffix}"
    try:
        create_topics(bootstrap, {topic: partitions, journal: 1, dead: 1})
        poison = [b"\x07not-avro", b"\x00\x00\x00\x00\x01\x02"]  # wrong magic byte, truncated record
        values = [(i % partitions, None, v) for i, v in enumerate(encoded_matched_records(records, seed))]
        values += [(i % partitions, None, v) for i, v in enumerate(poison)]
        produce(bootstrap, topic, values)
        config_path = work / "demo-config.yaml"
        config = demo_config(example, bootstrap, (topic, journal, dead), partitions, out_dir, records)
        config["kafka"]["confirmChangelogEnds"] = broker is not None  # the embedded broker's quirk
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        proc = spawn_worker(str(config_path), str(work / "worker.log"))
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                events = read_journal(bootstrap, journal, timeout_s=10)
                created = {e["event_id"]: e for e in events if e["event_type"] == "created"}
                if sum(e["records"] for e in created.values()) >= records:
                    break
                halted = [e for e in events if e["event_type"] in ("validation-failed", "finalize-failed")]
                if halted:
                    raise RuntimeError(f"the worker cannot finalize files: {halted[0]['error_message']}")
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {proc.returncode}; see {work / 'worker.log'}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"demo did not finish in {timeout_s}s; see {work / 'worker.log'}")
                time.sleep(1)
        finally:
            stop_worker(proc)
        counts: dict[str, int] = {}
        for event in events:
            counts[event["event_type"]] = counts.get(event["event_type"], 0) + 1
        dead_letters = read_dead_letters(bootstrap, dead, expect=len(poison), timeout_s=10)
        files = sorted(created.values(), key=lambda e: e["file_name"])
        return DemoResult(out_dir, files, counts, len(dead_letters), records)
    finally:
        if broker is not None:
            broker.stop()
