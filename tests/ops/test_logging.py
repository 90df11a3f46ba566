"""Quiet outages: the client libraries' repeated lines are held back with a doubling backoff."""

from __future__ import annotations

import io
import logging
import logging.config

from stream_app.ops.logging import OutageFilter, logging_config


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_repeated_line_passes_once_per_backoff_step_per_partition():
    clock = Clock()
    quiet = OutageFilter(first_s=1, max_s=8, clock=clock)
    passed: list[tuple[float, str]] = []
    for step in range(400):  # 40 s of an outage, every partition's line every 0.1 s
        clock.now = step / 10
        for partition in range(4):
            record = _record("aiokafka.consumer.fetcher", "Failed fetch messages from %s: %s", partition, "NodeNotReady")
            if quiet.filter(record):
                passed.append((clock.now, record.getMessage()))
    per_partition = [sum(1 for _, m in passed if m.startswith(f"Failed fetch messages from {p}:")) for p in range(4)]
    # t = 0, 1, 3, 7, then every 8 s: 15, 23, 31, 39 -> 8 lines in 40 s, instead of 400
    assert per_partition == [8] * 4, per_partition
    assert any("like it held back in the last 8 s" in m for _, m in passed)
    # our own loggers and the client libraries' INFO lines are never held back
    assert all(quiet.filter(_record("stream_app.live.app", "same line")) for _ in range(50))
    assert all(quiet.filter(_record("aiokafka", "same", level=logging.INFO)) for _ in range(50))


def test_lines_that_differ_only_in_a_duration_are_one_kind():
    clock = Clock()
    quiet = OutageFilter(first_s=1, max_s=8, clock=clock)
    passed = 0
    for step in range(100):
        clock.now = step / 10
        passed += quiet.filter(_record("mode.timers", "Timer %s is overlapping (interval=%r runtime=%r)",
                                       "flush-timer", 0.25, 0.3 + step / 1000, level=logging.WARNING))
    assert passed == 4  # t = 0, 1, 3, 7


def test_a_kind_quiet_for_the_longest_step_starts_over():
    clock = Clock()
    quiet = OutageFilter(first_s=1, max_s=4, clock=clock)
    assert quiet.filter(_record("mode.services", "Crashed reason=%r", "x"))
    clock.now = 0.5
    assert not quiet.filter(_record("mode.services", "Crashed reason=%r", "x"))
    clock.now = 10  # the outage ended and a new one began
    assert quiet.filter(_record("mode.services", "Crashed reason=%r", "x"))


def test_the_worker_logging_config_installs_the_filter():
    stream = io.StringIO()
    config = logging_config("WARNING", "json")
    config["handlers"]["stderr"]["stream"] = stream
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logging.config.dictConfig(config)
    try:
        log = logging.getLogger("aiokafka.conn")
        for _ in range(100):
            log.error("Unable connect to node with id %s: %s", 1, "Connect call failed")
        assert stream.getvalue().count("Unable connect to node with id 1") == 1
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def test_the_stack_dump_shows_frames_and_never_local_values():
    import asyncio
    import io
    import threading

    from stream_app.ops.logging import dump_stacks

    release = threading.Event()

    def holder() -> None:
        card_number = "4111111111111111"  # a record value in a frame's locals
        release.wait(10)
        assert card_number

    thread = threading.Thread(target=holder, name="holder")
    thread.start()

    async def scenario() -> str:
        async def task_holding() -> None:
            holder_name = "ANNA SCHMIDT"
            await asyncio.sleep(10)
            assert holder_name

        task = asyncio.ensure_future(task_holding())
        await asyncio.sleep(0.05)
        out = io.StringIO()
        dump_stacks(out)
        task.cancel()
        return out.getvalue()

    try:
        dump = asyncio.run(scenario())
    finally:
        release.set()
        thread.join()
    assert "THREAD holder" in dump and "in holder" in dump and "task_holding" in dump
    assert "4111111111111111" not in dump and "ANNA SCHMIDT" not in dump
