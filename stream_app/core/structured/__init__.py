"""Structured mode: schema packs, record projection with typed validation, aggregates."""
