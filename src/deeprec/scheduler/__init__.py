"""Scheduler: tail latency from OTLP, DeepRecSched tuning, policy stream."""
