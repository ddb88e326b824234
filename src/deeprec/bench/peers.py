"""`deeprec bench peers`: deeprec's latency-bounded throughput next to the servers people
would pick instead, on the same model graph, queries, SLA and cores.

Peers: NVIDIA Triton (python backend on ONNX Runtime, dynamic batcher on; the
``peers`` extra) and a plain grpcio server around one ONNX Runtime session. Each gets
the threads deeprec's workers get (workers x threads). The ratios are deeprec's
capacity over each peer's. First, with the cores to itself, it measures ONNX Runtime's
in-process capacity on the same model (the physical limit), and sets each served
capacity against it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from deeprec.common.threads import usable_cores
from deeprec.models import bench

from .capacity import (
    BadArguments,
    Searches,
    capacity_of,
    common,
    found_of,
    header,
    measure_targets,
    setup,
    sweep_rates,
    sweep_table,
    table,
    write_outputs,
)
from .search import Ratio, capacity_ratio
from .targets import DeeprecTarget, FloorTarget, PlainTarget, TritonTarget, parse_configs

PEERS = ("triton", "plain")
FLOOR = "floor"  # the plain server with no model: `deeprec bench cost` only


def ratios(entries: list[dict]) -> dict[str, Ratio]:
    """deeprec's capacity / each peer's; a bound where one of them met the SLA at every
    rate tried, none where either is missing or 0 (search.capacity_ratio)."""
    ours = next((found_of(e) for e in entries if e["config"]["kind"] == "deeprec"), None)
    return {
        f"deeprec/{entry['config']['kind']}": capacity_ratio(ours, found_of(entry))
        for entry in entries
        if entry["config"]["kind"] != "deeprec"
    }


def in_process_capacity(artifact, seconds: float, say) -> dict:
    """ONNX Runtime's in-process capacity on these cores (models/bench.capacity)."""
    result = bench.capacity(artifact, seconds, usable_cores(), log=say)
    return {"seconds_per_point": seconds, "best": result["best"], "results": result["results"]}


def of_in_process(entries: list[dict], in_process: dict, mean_items: float) -> None:
    """Each entry's served items/s (capacity x mean query size) over the in-process best."""
    limit = in_process["best"]["items_per_s"]
    for entry in entries:
        capacity = capacity_of(entry)
        if capacity is None or not limit:
            entry["of_in_process"] = None
            continue
        entry["served_items_per_s"] = capacity * mean_items
        entry["of_in_process"] = capacity * mean_items / limit


def make_peers(shared, peers: list[str], args, say, skipped: dict | None = None) -> list:
    """Targets for the named peers; Triton is skipped (noted in ``skipped``) when it is
    not installed, unless ``args.require_triton`` (then BadArguments)."""
    targets = []
    for peer in peers:
        if peer == "plain":
            targets.append(PlainTarget(shared))
            continue
        if peer == FLOOR:
            targets.append(FloorTarget(shared))
            continue
        from .triton import TritonUnavailable

        try:
            targets.append(
                TritonTarget(shared, args.triton_max_batch, args.triton_delay_us, args.triton_dir)
            )
        except TritonUnavailable as err:
            if args.require_triton:
                raise BadArguments(str(err)) from None
            say(f"note: skipping Triton: {err}")
            if skipped is not None:
                skipped["triton"] = str(err)
    return targets


def run_peers(args, stop: threading.Event, say: Callable[[str], None]) -> int:
    try:
        configs = parse_configs(args.deeprec)
        if len(configs) != 1:
            raise BadArguments("--deeprec takes one configuration")
        config = configs[0]
        peers = [p.strip() for p in args.peers.split(",") if p.strip()]
        unknown = set(peers) - set(PEERS)
        if unknown:
            raise BadArguments(f"unknown peer(s) {', '.join(sorted(unknown))}: choose {PEERS}")
        rates = sweep_rates(args)
        model_dir, artifact, workload, queries, sla, search, plan, tuned_plan = setup(args, say)
    except (BadArguments, ValueError) as err:
        say(f"deeprec: error: {err}")
        return 2
    shared = common(args, model_dir, artifact, stop, say)
    skipped = {}
    try:
        peer_targets = make_peers(shared, peers, args, say, skipped)
    except BadArguments as err:
        say(f"deeprec: error: {err}")
        return 2
    targets = [DeeprecTarget(shared, config, sla), *peer_targets]
    data = header("peers", args, artifact, workload, sla, search)
    if args.in_process_seconds > 0:  # before any server starts: the cores to itself
        data["in_process"] = in_process_capacity(artifact, args.in_process_seconds, say)
    searches = Searches(queries, sla, search, plan, tuned_plan, args.seed, stop, say)
    data["configs"] = measure_targets(targets, searches, args, rates, data)
    data["skipped"] = skipped
    found = ratios(data["configs"])
    data["ratios"] = {name: ratio.exact for name, ratio in found.items()}
    # A capacity at the top of the ladder is a floor: the ratio is then a bound, not a value.
    data["ratio_bounds"] = {name: ratio.text() for name, ratio in found.items() if ratio.bound}
    if "in_process" in data:
        of_in_process(data["configs"], data["in_process"], workload.sizes.mean)
    print(
        f"\nlatency-bounded throughput, {sla.describe()}: {artifact.spec.name} "
        f"({artifact.spec.size}), same graph and queries, {usable_cores()} cores, "
        f"{args.workers} x {args.threads} thread(s) each"
    )
    for line in sweep_table(data) + table(data):
        print(line)
    for name, ratio in found.items():
        print(f"{name}: {ratio.text()}")
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")
    if "in_process" in data:
        best = data["in_process"]["best"]
        print(
            f"in-process ONNX Runtime capacity: {best['items_per_s']:,.0f} items/s "
            f"({best['embeddings']}, B = {best['batch_size']}, {bench.describe_layout(best)}); "
            "served / in-process: "
            + ", ".join(
                f"{e['name']} "
                + ("-" if e.get("of_in_process") is None else f"{e['of_in_process']:.2f}")
                for e in data["configs"]
            )
        )
    out = args.json or f"results/bench-peers-{artifact.spec.name}-{artifact.spec.size}.json"
    write_outputs(data, out, args.png, say)
    failed = [e for e in data["configs"] if capacity_of(e) is None]
    return 1 if failed or len(data["configs"]) < len(targets) else 0
