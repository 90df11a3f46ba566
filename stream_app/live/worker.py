"""The Faust worker process that runs the app (the ``worker`` command)."""

from __future__ import annotations

from typing import Any, TextIO, cast

import faust

from stream_app.ops.logging import dump_stacks


class Worker(faust.Worker):
    async def _cry(self) -> None:  # SIGUSR1: stacks without local variables (record values)
        dump_stacks(cast(TextIO, self.stderr))


def run_worker(app: faust.App, log_level: str, log_config: dict[str, Any]) -> None:
    """Run until a signal stops it (Faust's worker: signal handling, the event loop, shutdown)."""
    Worker(app, loglevel=log_level, quiet=True, logging_config=log_config).execute_from_commandline()
