"""Latency profiling: statistics, timing loops and benchmark scripts on top of `runtimes`."""
