"""Benchmarks: latency-bounded throughput (`deeprec bench capacity`) and peers side by side."""
