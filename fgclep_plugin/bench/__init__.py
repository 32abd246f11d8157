"""Benchmarks (commands that print measured figures, run by hand): shard streaming (``shards``), the ECG tower
against its reference (``tower``), training throughput (``train``) and synthetic generation (``synth``)."""
