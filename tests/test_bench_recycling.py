"""`deeprec bench recycling`: a real grpc.aio server recycling its connections (GOAWAY)
while callers go through the one-replica failover; no request may fail for it."""

from __future__ import annotations

import json

from deeprec import cli


def test_requests_to_one_replica_survive_its_connection_recycling(tmp_path, capsys):
    out = tmp_path / "recycling.json"
    argv = ["bench", "recycling", "--max-age-ms", "300", "--seconds", "3"]
    argv += ["--bytes", "200000", "--concurrency", "2", "--json", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    counts = result["counts"]
    assert result["requests"] == counts["requests answered"] > 0
    assert counts.get("requests failed", 0) == 0
    # Every try that failed was followed by one that answered.
    failed_tries = sum(v for k, v in counts.items() if k.startswith("tries failed"))
    assert counts.get("answered on a retry", 0) == counts.get("first tries failed", 0)
    assert failed_tries == counts.get("first tries failed", 0)
    assert "the deployed failover failed 0" in capsys.readouterr().out
