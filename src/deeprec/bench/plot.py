"""PNG of a capacity run: tail latency vs offered rate, one curve per configuration.

Needs matplotlib (the ``bench`` extra); without it the JSON is still written and the
command says how to get the plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

INSTALL_HINT = "pip install -e '.[bench]'  (or: pip install 'matplotlib>=3.8,<4')"


def curve(trials: list[dict]) -> tuple[list[float], list[float | None]]:
    """Per offered rate (ascending), the worst tail measured there (None: no answer)."""
    worst: dict[float, float] = {}
    for t in trials:
        tail = math.inf if t["tail_ms"] is None else t["tail_ms"]
        worst[t["rate"]] = max(worst.get(t["rate"], -math.inf), tail)
    rates = sorted(worst)
    return rates, [None if math.isinf(worst[r]) else worst[r] for r in rates]


def plot(result: dict, path: Path, say: Callable[[str], None]) -> Path | None:
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say(f"note: no PNG written: matplotlib is not installed; {INSTALL_HINT}")
        return None
    sla = result["sla"]
    fig, ax = plt.subplots(figsize=(8, 5))
    top = 4 * sla["ms"]
    for config in result["configs"]:
        search = config.get("search") or config.get("sweep")
        if not search or not search["trials"]:
            continue
        if "medians" in search:  # a sweep: the median over its rounds at each rate
            rates = [m["rate"] for m in search["medians"]]
            tails = [m["median_tail_ms"] for m in search["medians"]]
        else:
            rates, tails = curve(search["trials"])
        shown = [top if t is None or t > top else t for t in tails]
        (line,) = ax.plot(rates, shown, marker="o", label=config["name"])
        if search["capacity_qps"]:
            ax.axvline(search["capacity_qps"], color=line.get_color(), linestyle=":", alpha=0.7)
    ax.axhline(sla["ms"], color="black", linestyle="--", label=f"SLA p{sla['percentile']:g}")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_ylim(0, top * 1.05)
    ax.set_xlabel("offered load (queries/s, Poisson)")
    ax.set_ylabel(f"p{sla['percentile']:g} latency (ms, from due time; clipped)")
    ax.set_title(
        f"{result['model']} ({result['size']}): latency-bounded throughput, "
        f"{result['cores']} cores (dotted: capacity)"
    )
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
