"""The live worker: the only code that imports Faust (app wiring, runtime, rebalance, transport)."""
