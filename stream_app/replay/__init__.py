"""Replay: regenerate or audit files from a bounded range of the input topics, without Faust."""
