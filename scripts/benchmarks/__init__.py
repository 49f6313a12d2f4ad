"""What scripts/bench.py measures, one module per thing measured, around one harness
(harness.py: the shared data, timing, processes and the table)."""
