"""The tuner against the simulator through a ladder of loads, as `bench peers --sweep`
serves a tuned target: how often the policy in force is far from the best static B.

No servers: each load step is a run of windows of ``--trial-queries`` queries, simulated
(bench/simulator.py) under the policy in force and fed to the tuner as the scheduler
would. The last 12 s at each load (of 42) are the measured part of a trial, as the
sweep settles 30 s and measures 12; a window there whose policy's p95, on a long
simulation of that B alone, is over 1.1x the best static B's counts as off (``Ladder``
holds these). Only B is tuned: the merge delay is left out because the simulator does
not model merging, and threads per run to keep the ladder about B. Deterministic per
seed, so a rule of the tuner can be compared before and after on the same ladders.

  deeprec bench tuner-sim --server din --seeds 30 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, replace

from deeprec.common import argtypes
from deeprec.common.jsonfile import write_json
from deeprec.common.policy import Policy
from deeprec.launcher.console import say
from deeprec.scheduler.tuner import Tuner, TunerConfig

from .simulator import ServerModel, simulate

# Servers to tune. "din": runs that cost more per item as they grow, fitted to DIN's
# in-process profile (two runs of one thread: 64 items 1.47 ms, 256 items 6.56, 1024
# items 44.4) plus a sub-batch overhead, so that B = 256 is the best static B at every
# rate of its ladder. "linear": runs that get cheaper per item as they grow (a fixed
# overhead per sub-batch), as RMC1's do.
SERVERS = {
    "din": ServerModel(overhead_ms=1.5, per_item_ms=0.0182, per_item_squared_ms=2.43e-5),
    "linear": ServerModel(overhead_ms=3.0, per_item_ms=0.04),
}
LADDERS = {"din": (120, 135, 151, 170, 190, 213), "linear": (20, 30, 40, 50, 60, 70)}


@dataclass(frozen=True)
class Ladder:
    rates: tuple[float, ...]
    rounds: int = 3
    seconds_per_rate: float = 42.0  # the sweep's 30 s to settle and 12 measured
    measured_s: float = 12.0
    trial_queries: int = 300
    start_batch_size: int = 256  # the chart's default
    tolerance: float = 1.1


def best_static(server: ServerModel, batch_sizes, rates, seconds: float = 60.0) -> dict:
    """rate -> B -> p95 ms of that B alone, one long simulation each."""
    return {
        rate: {b: simulate(server, b, 0, rate, seconds, seed=7).latency_ms for b in batch_sizes}
        for rate in rates
    }


def window_spread(server: ServerModel, batch_size: int, rate: float, queries: int, n=30):
    """The relative standard deviation of one trial window's p95 under a fixed B: the
    noise a trial's tail carries, which the tuner's margins are held against."""
    tails = [
        simulate(server, batch_size, 0, rate, max(1.0, queries / rate), seed=seed).latency_ms
        for seed in range(n)
    ]
    return statistics.stdev(tails) / statistics.fmean(tails)


def run_ladder(server: ServerModel, config: TunerConfig, ladder: Ladder, seed: int, truth: dict):
    """One tuned pass over the ladder: (measured windows, windows off the best, held Bs)."""
    tuner, policy = Tuner(config), Policy("m", ladder.start_batch_size, 0)
    measured = off = step = 0
    held = []
    for _ in range(ladder.rounds):
        for rate in ladder.rates:
            seconds = max(1.0, ladder.trial_queries / rate)
            elapsed = 0.0
            while elapsed < ladder.seconds_per_rate:
                obs = simulate(
                    server,
                    policy.batch_size,
                    0,
                    rate,
                    seconds,
                    seed=seed * 10_000 + step,
                    threads=policy.threads,
                    merge_delay_us=policy.merge_delay_us,
                )
                step += 1
                if elapsed >= ladder.seconds_per_rate - ladder.measured_s:
                    best = min(truth[rate].values())
                    measured += 1
                    off += truth[rate][policy.batch_size] > ladder.tolerance * best
                    held.append(policy.batch_size)
                elapsed += seconds
                decision = tuner.step(policy, obs)
                if decision.policy is not None:
                    policy = replace(decision.policy, version=policy.version + 1)
    return measured, off, held


def run_tuner_sim(args) -> int:
    server = SERVERS[args.server]
    rates = tuple(args.rates) if args.rates else LADDERS[args.server]
    ladder = Ladder(rates, rounds=args.rounds, trial_queries=args.trial_queries)
    config = TunerConfig(sla_ms=args.sla_ms, threads=(), merge_delays_us=())
    say(f"best static B per rate ({args.server} server, {len(config.batch_sizes)} B)")
    truth = best_static(server, config.batch_sizes, rates)
    spread = {}
    for rate, by_b in truth.items():
        best = min(by_b, key=by_b.get)
        spread[rate] = window_spread(server, best, rate, ladder.trial_queries)
        say(
            f"  {rate:6g} q/s: B={best} {by_b[best]:.1f} ms; one {ladder.trial_queries}-query "
            f"window's p95 varies by {spread[rate]:.0%} (relative sd)"
        )
    total_measured = total_off = 0
    per_seed = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        measured, off, held = run_ladder(server, config, ladder, seed, truth)
        total_measured, total_off = total_measured + measured, total_off + off
        per_seed.append({"seed": seed, "measured": measured, "off": off, "held": held})
    share = total_off / total_measured if total_measured else 0.0
    say(
        f"measured windows over {ladder.tolerance:g}x the best static p95: "
        f"{total_off} of {total_measured} ({share:.1%}) over {args.seeds} ladders"
    )
    result = {
        "kind": "tuner-sim",
        "server": args.server,
        "ladder": {
            "rates": list(rates),
            "rounds": ladder.rounds,
            "seconds_per_rate": ladder.seconds_per_rate,
            "measured_s": ladder.measured_s,
            "trial_queries": ladder.trial_queries,
            "start_batch_size": ladder.start_batch_size,
            "tolerance": ladder.tolerance,
        },
        "best_static": {str(rate): by_b for rate, by_b in truth.items()},
        "window_p95_relative_sd": {str(rate): value for rate, value in spread.items()},
        "measured": total_measured,
        "off": total_off,
        "seeds": per_seed,
    }
    out = args.json or f"results/bench-tuner-sim-{args.server}.json"
    say(f"wrote {write_json(out, result)}")
    return 0


def add_parser(bench) -> None:
    p = bench.add_parser(
        "tuner-sim",
        help="the tuner against the simulator through a ladder of loads (no servers)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--server", choices=sorted(SERVERS), default="din")
    p.add_argument("--rates", type=argtypes.positive, nargs="*", help="the ladder (q/s)")
    p.add_argument("--rounds", type=argtypes.count, default=3, help="passes over the ladder")
    p.add_argument("--seeds", type=argtypes.count, default=10, help="ladders, one per seed")
    p.add_argument("--first-seed", type=argtypes.seed, default=0)
    p.add_argument("--trial-queries", type=argtypes.count, default=300)
    p.add_argument("--sla-ms", type=argtypes.positive, default=100.0)
    p.add_argument("--json", help="result file (default results/bench-tuner-sim-SERVER.json)")
    p.set_defaults(func=run_tuner_sim)
