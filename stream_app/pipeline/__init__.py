"""The stages live and replay share, their ports, and the committer that owns the durable order."""
