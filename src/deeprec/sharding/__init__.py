"""The sharding planner: which sparse shard holds which embedding rows (pure Python)."""
