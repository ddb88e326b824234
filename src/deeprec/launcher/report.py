"""Human-readable lines for load runs (pure formatting, no I/O)."""

from __future__ import annotations

from deeprec.workload.openloop import LoadResult, Progress


def _ms(summary: dict, key: str) -> str:
    return f"{summary[key]:.1f}" if key in summary else "-"


def progress_line(p: Progress) -> str:
    recent = (
        f"last window p50 {_ms(p.window, 'p50_ms')} ms, p99 {_ms(p.window, 'p99_ms')} ms"
        if p.window.get("count")
        else "no answers in the last window"
    )
    return (
        f"[{p.elapsed:5.1f} s] sent {p.sent}, ok {p.ok}, errors {p.errors}, "
        f"late {p.late}, in flight {p.in_flight}; {recent}"
    )


LATENCY_HEADER = f"{'':<10} {'queries':>8} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'max ms':>9}"


def latency_row(label: str, summary: dict) -> str:
    return (
        f"{label:<10} {summary.get('count', 0):>8} {_ms(summary, 'p50_ms'):>9} "
        f"{_ms(summary, 'p95_ms'):>9} {_ms(summary, 'p99_ms'):>9} {_ms(summary, 'max_ms'):>9}"
    )


def load_report(result: LoadResult) -> list[str]:
    errors = ", ".join(f"{k} {v}" for k, v in sorted(result.errors.items())) or "none"
    lines = [
        f"target {result.rate:g} queries/s for {result.duration:g} s"
        + (" (stopped early)" if result.stopped_early else ""),
        f"sent {result.sent} ({result.send_rate:.1f}/s), late sends {result.late}, "
        f"answered {result.ok}, errors: {errors}",
        f"achieved {result.qps:.1f} queries/s, {result.items_per_s:,.0f} items/s "
        f"({result.items:,} items in {result.elapsed:.1f} s)",
        LATENCY_HEADER,
        latency_row("all", result.latency),
    ]
    lines += [latency_row(f"path {path}", s) for path, s in sorted(result.paths.items())]
    return lines


def restarts_text(restarts: dict[str, int]) -> str:
    """``restarted frontend 1 time, worker-0 2 times``; "" when nothing was restarted."""
    parts = [f"{name} {n} time{'s' if n != 1 else ''}" for name, n in sorted(restarts.items()) if n]
    return f"restarted {', '.join(parts)}" if parts else ""


SERVING_HEADER = (
    f"{'rate':>6} {'achieved':>9} {'items/s':>9} {'vs ORT':>7} {'p50 ms':>8} {'p95 ms':>8} "
    f"{'p99 ms':>8} {'errors':>6} {'late':>5}"
)


def serving_row(result: LoadResult, capacity: float) -> str:
    ratio = result.items_per_s / capacity if capacity else 0.0
    return (
        f"{result.rate:>6g} {result.qps:>9.1f} {result.items_per_s:>9,.0f} {ratio:>7.2f} "
        f"{_ms(result.latency, 'p50_ms'):>8} {_ms(result.latency, 'p95_ms'):>8} "
        f"{_ms(result.latency, 'p99_ms'):>8} {result.error_count:>6} {result.late:>5}"
    )
