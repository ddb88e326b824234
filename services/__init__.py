"""deeprec: serving deep-learning recommendation models under a tail-latency target.

The importable package is ``deeprec``; its source lives in ``services/`` (one folder per
service plus small shared parts), mapped in pyproject.toml.
"""

__version__ = "0.1.0"
