"""stream_app: deterministic clearing files from matched-record Kafka topics."""

__version__ = "0.4.0"
