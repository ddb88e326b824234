"""`deeprec bench fuzz`: malformed requests to every RPC of real local clusters.

Two clusters start as child processes (launcher.LocalCluster): a single-server one (a
scheduler, 2 workers, a frontend) and a sharded one (2 sparse shards, a worker, a
frontend). Every RPC of every service then gets N requests drawn from a seeded NumPy
generator, sent as raw bytes (identity serializers, so the wire is exactly what was
generated):

- good requests built from the model's signature;
- structurally valid protobufs with extreme values: int32/int64 edges, lengths whose int64
  sum wraps around to the number of ids, shapes whose element count overflows int64,
  negative dimensions, dtypes out of range, data sizes that do not match, NaN dense
  values, 1 MiB names, unknown and duplicate features, ids out of range, empty and huge
  batches;
- good requests mutated byte by byte after serialization (bit flips, truncation,
  insertion, deletion, splicing);
- crafted wire (invalid UTF-8 in a string field, deeply nested unknown groups, overlong
  varints, bad wire types) and raw random bytes.

Rules checked for each answer: a deliberate status (OK, INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED, OUT_OF_RANGE; UNAUTHENTICATED and
PERMISSION_DENIED for admin RPCs) with a message of 1..1024 characters, never UNKNOWN or
INTERNAL, never a transport error; an OK answer parses as the RPC's response type; a request
that cannot be valid (it does not parse, or its content breaks the protocol) is not
answered OK. Between requests: every child process is still alive (one that died is
recorded with the requests that preceded its death, then restarted), and good queries,
interleaved, give the scores of the NumPy reference model (rtol 1e-5, atol 1e-6).

Case generation (``generate``) is pure: the same (RPC, context, seed, index) gives the same
bytes, so a failing case can be replayed alone (``replay``).
"""

from .campaign import (
    Campaign,
    run_campaign,
    run_fuzz,
    start_clusters,
    stop_clusters,
    table,
)
from .cases import RPCS, Case, Context, generate, replay

__all__ = [
    "RPCS",
    "Campaign",
    "Case",
    "Context",
    "generate",
    "replay",
    "run_campaign",
    "run_fuzz",
    "start_clusters",
    "stop_clusters",
    "table",
]
