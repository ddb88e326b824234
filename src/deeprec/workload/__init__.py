"""Production-like workload: arrivals, query sizes, id distributions, open-loop load."""
