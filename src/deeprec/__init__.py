"""deeprec: serving deep-learning recommendation models under a tail-latency target.

Services (one package each: frontend, inference, shard, scheduler) sit on shared
libraries (common, models, sharding); the harness (launcher, workload, bench) and the
command line (cli) sit above them, and no service imports the harness.
docs/architecture.md has the map.
"""

__version__ = "0.1.0"
