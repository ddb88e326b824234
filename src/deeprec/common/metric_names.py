"""Names of the metrics deeprec emits: a contract with the scheduler (which tunes on them)
and the Grafana dashboard (tests check the dashboard against a live export)."""

QUERY_LATENCY = "deeprec.query.latency"
QUERY_SIZE = "deeprec.query.size"
QUERY_ERRORS = "deeprec.query.errors"  # queries answered with an error status, by code
SUBBATCH_LATENCY = "deeprec.subbatch.latency"
SUBBATCH_SERVICE = "deeprec.subbatch.service_time"
SUBBATCH_QUEUE = "deeprec.subbatch.queue_wait"
SUBBATCH_SIZE = "deeprec.subbatch.size"
POOL_WORKERS = "deeprec.pool.workers"
POOL_IN_FLIGHT = "deeprec.pool.in_flight"  # sub-batches sent and not answered (KEDA scales on it)
POLICY_BATCH_SIZE = "deeprec.policy.batch_size"
POLICY_THRESHOLD = "deeprec.policy.offload_threshold"
POLICY_VERSION = "deeprec.policy.version"
POLICY_THREADS = "deeprec.policy.threads"
POLICY_MERGE_DELAY = "deeprec.policy.merge_delay"  # in us
SHARD_LOOKUP_LATENCY = "deeprec.shard.lookup.latency"
SCHEDULER_CONNECTED = "deeprec.scheduler.connected"  # 1 while a frontend follows the policies
# The scheduler's own decisions (scheduler/decisions.py), beside the policies the frontends run.
SCHEDULER_POLICY_CHANGES = "deeprec.scheduler.policy_changes"  # by model, reason and phase
SCHEDULER_DECISION_LATENCY = "deeprec.scheduler.decision.latency"  # tail under the replaced policy
SCHEDULER_DECISION_QUERIES = "deeprec.scheduler.decision.queries"  # queries that tail rests on
