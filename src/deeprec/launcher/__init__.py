"""Local launcher: every service as a process on 127.0.0.1 (deeprec up, query, demo)."""
