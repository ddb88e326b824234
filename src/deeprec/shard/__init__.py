"""Sparse shard: the embedding rows a sharding plan gives it, behind deeprec.v1.SparseShard."""
