"""Commands around the worker: the journal and dead-letter tools, preflight, the demo, the embedded broker."""
