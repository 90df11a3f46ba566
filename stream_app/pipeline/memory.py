"""In-process implementations of the pipeline's ports, for replay and the unit tests."""

from __future__ import annotations

from stream_app.core.windows import TP, Checkpoint, FileKey, WindowFacts


class MemoryStateStore:
    """State that lives as long as the process (replay, unit tests).

    Facts are stored as copies, as a table stores them: what the windower changes later is not
    in the store until it is put again.
    """

    def __init__(self) -> None:
        self.facts: dict[FileKey, WindowFacts] = {}
        self.checkpoints: dict[TP, Checkpoint] = {}

    def get_facts(self, key: FileKey) -> WindowFacts | None:
        facts = self.facts.get(key)
        return WindowFacts.from_json(facts.to_json()) if facts is not None else None

    def put_facts(self, key: FileKey, facts: WindowFacts) -> None:
        self.facts[key] = WindowFacts.from_json(facts.to_json())

    def get_checkpoint(self, tp: TP) -> Checkpoint | None:
        return self.checkpoints.get(tp)

    def put_checkpoint(self, tp: TP, checkpoint: Checkpoint) -> None:
        self.checkpoints[tp] = checkpoint
