"""Output formatters for structured mode: one small interface, three implementations."""
