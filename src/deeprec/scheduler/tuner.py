"""DeepRecSched online: hill-climb B, then sweep T, then try each CPU run's threads and
merge delay, against the tail-latency SLA at the current load.

Pure logic: the scheduler feeds one ``Observation`` per tick (what was measured since the
policy in force took effect) and gets back the next policy to try, if any. The paper
measures every candidate offline; here the per-sub-batch service time that every trial
measures is fitted to ``a + b * items``, and a queueing estimate ranks the untried batch
sizes, so the climb jumps to the predicted best instead of walking there one step at a
time.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field, replace

from deeprec.common.policy import Policy, describe

INF = math.inf
# Held windows in a row whose load moved, or whose tail broke the SLA, before a new
# round starts.
DRIFT_WINDOWS = 2
# A batch size's measured cost per item counts from this many sub-batches on, and two
# costs closer than this share are the same (a B's sub-batches under other loads and
# rounds differ by a few percent).
COST_SUBBATCHES = 20
COST_TOLERANCE = 0.05


@dataclass(frozen=True)
class Observation:
    queries: int  # answered under the policy in force
    seconds: float
    latency_ms: float  # at the SLA percentile
    qps: float
    mean_items: float
    cpu_workers: int = 1
    max_items: int = 0  # largest query seen (0 = unknown)
    # batch size in force -> (mean items per sub-batch, mean service ms, sub-batches)
    service: dict = field(default_factory=dict)
    min_items: int = 0  # smallest query seen (0 = unknown)
    # The share of the window the CPU runs were busy: its sub-batches' service ms over
    # the window's run time, cpu_workers runs at once (None: not measured).
    runs_busy: float | None = None


@dataclass(frozen=True)
class TunerConfig:
    sla_ms: float = 50.0
    batch_sizes: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
    thresholds: tuple[int, ...] = (0, 100, 200, 300, 400, 500, 600, 700, 1024)  # 0 = never
    # Intra-op threads per CPU run to try besides 0 (each pool's own): more finish one
    # run sooner (the light-load tail), fewer run more at once (capacity). () = not tuned.
    threads: tuple[int, ...] = (2,)
    # Merge delays (us) to try besides 0 (none): how long a run short of B waits to merge
    # more. () = not tuned.
    merge_delays_us: tuple[int, ...] = (1000,)
    gpu: bool = False
    min_queries: int = 300  # a trial's sample
    max_trial_s: float = 20.0  # under light load, settle for fewer queries
    min_trial_queries: int = 50
    guard_factor: float = 3.0  # a trial this far over the SLA and the incumbent is cut short
    improvement: float = 0.02  # relative gain the model must predict to jump
    plateau: float = 0.1  # results this close to the best count as equally good
    drift: float = 0.3  # relative load change that starts a new round of tuning
    # A trial that beats an incumbent meeting the SLA by less than this many times its
    # margin is checked against the incumbent measured again right after it (0: never).
    confirm_within: float = 3.0
    # Runs busy this share of the time or more under the incumbent: more threads per run
    # are not tried. k threads per run leave the cores 1/k as many runs at once, each
    # less than k times faster, so the runs' queue grows: in the simulator one thread per
    # run wins from here up for a second thread up to 1.7x faster (RMC3 and DIN measure
    # 1.6x, RMC1 none), and under the full load of the 2026-12-03 tuning runs every
    # two-thread trial lost (37-73 ms against 23-25).
    busy_for_more_threads: float = 0.5


@dataclass
class ServiceModel:
    """Sub-batch service time = overhead_ms + per_item_ms * items (least squares)."""

    overhead_ms: float
    per_item_ms: float

    @classmethod
    def fit(cls, service: dict) -> ServiceModel | None:
        points = [(items, ms, n) for items, ms, n in service.values() if n > 0]
        # Two sub-batch sizes too close together give a slope made of noise.
        if not points or max(p[0] for p in points) < 1.5 * min(p[0] for p in points):
            return None
        weight = sum(n for _, _, n in points)
        mx = sum(x * n for x, _, n in points) / weight
        my = sum(y * n for _, y, n in points) / weight
        var = sum(n * (x - mx) ** 2 for x, _, n in points)
        slope = sum(n * (x - mx) * (y - my) for x, y, n in points) / var
        slope = max(slope, 1e-6)
        return cls(max(my - slope * mx, 0.0), slope)

    def predict_latency(self, batch_size: int, obs: Observation) -> float:
        """Mean query latency (ms) at the observed load if every query were split by B."""
        n = max(obs.mean_items, 1.0)
        k = 1 if batch_size <= 0 else math.ceil(n / batch_size)
        service = self.overhead_ms + self.per_item_ms * n / k
        workers = max(obs.cpu_workers, 1)
        utilisation = obs.qps * k * service / (workers * 1000.0)
        if utilisation >= 0.97:
            return INF
        rounds = math.ceil(k / workers)
        return rounds * service + service * utilisation / (1.0 - utilisation)


def noise_margin(queries: int) -> float:
    """How much better than the incumbent a trial's tail must be to replace it: identical
    windows of a few hundred queries differ by 10-25% (issue 17), so the relative
    sampling error of the tail, about 1/sqrt(queries), and at least 3%."""
    return min(0.25, max(0.03, 1.0 / math.sqrt(max(queries, 1))))


@dataclass
class Decision:
    policy: Policy | None  # a new policy to apply (None: keep the one in force)
    consumed: bool  # the observation window was used up; start a new one
    note: str = ""  # why, where the measurement alone does not say (policy history)


# The phases of a round, in order, and the policy field each one tunes.
PHASE_KNOBS = {
    "b": "batch_size",
    "t": "offload_threshold",
    "threads": "threads",
    "delay": "merge_delay_us",
}


class Tuner:
    """One model's tuner: phases ``b`` (batch size), ``t`` (offload threshold, with a GPU
    pool), ``threads`` and ``delay`` (how CPU runs are made), then ``hold``."""

    def __init__(self, config: TunerConfig):
        self.config = config
        self.phase = "idle"
        self.pending: list[str] = []  # this round's phases still to come, in order
        self.results: dict[int, float] = {}  # knob value -> tail latency, this phase
        self.service: dict = {}  # batch size -> (items, ms, n), across rounds (load-free)
        self.service_threads = 0  # the threads those sub-batches ran with
        self.incumbent: Policy | None = None
        self.incumbent_ms = INF
        self.challenger: tuple[Policy, float] | None = None  # a narrow win, to confirm
        self.base_qps = 0.0
        self.round_qps = 0.0  # the load this round's trials were measured at
        self.least_split = 0.0  # the smallest B this round tries (a load rise sets it)
        self.round_queries = 0  # answered in the windows this round ranked, and
        self.round_seconds = 0.0  # the seconds they span: the round's mean load
        self.drifted = 0  # consecutive held windows whose load moved
        self.broken = 0  # consecutive held windows over the SLA
        self.max_items = 0
        self.min_items = 0  # 0 = unknown
        self.busy: dict[tuple, float] = {}  # knobs -> runs' busy share, this round
        self.threads_lost_at: dict[int, float] = {}  # threads per run -> lowest q/s lost at
        self._notes: list[str] = []  # what a step decided without a trial, for the history
        self.trials = 0
        self.history: list[tuple[str, int, float]] = []  # (knob, value, latency) per trial

    # -- the loop ---------------------------------------------------------------------------

    def step(self, policy: Policy, obs: Observation) -> Decision:
        self._notes = []
        decision = self._step(policy, obs)
        if self._notes:
            decision.note = "; ".join(
                [*self._notes, decision.note] if decision.note else self._notes
            )
        return decision

    def _step(self, policy: Policy, obs: Observation) -> Decision:
        if policy.pinned:
            self.phase = "idle"
            return Decision(None, consumed=True)
        if self.phase == "idle":
            self._start_round(policy)
        if policy.threads != self.service_threads:  # runs of other threads cost otherwise
            self.service, self.service_threads = {}, policy.threads
        self.service.update({b: v for b, v in obs.service.items() if v[2] > 0})
        if obs.runs_busy is not None:
            self.busy[_knobs(policy)] = obs.runs_busy
        self.max_items = max(self.max_items, obs.max_items)
        if obs.min_items > 0:
            self.min_items = min(self.min_items or obs.min_items, obs.min_items)
        knob = self._knob(policy)
        trial = self.phase != "hold" and knob not in self.results
        if trial and self._breaks_sla_badly(obs):
            if self.incumbent_ms == INF and self._same_knobs(policy, self.incumbent):
                # The round's first trial is the policy in force: its tail is the bar the
                # next trials must beat (ranked as measured, so that one whose start still
                # waits behind this one's backlog is not cut and the bad start kept).
                self._record(knob, obs.latency_ms, obs)
                self.incumbent_ms = obs.latency_ms
            else:
                self._record(knob, INF, obs)
            return Decision(self._next(policy, obs), consumed=True)
        if trial and self._clearly_worse(obs) and not self._escapes_overload(policy):
            self._record(knob, obs.latency_ms, obs)
            return Decision(self._next(policy, obs), consumed=True)
        enough = obs.queries >= self.config.min_queries or (
            obs.seconds >= self.config.max_trial_s and obs.queries >= self.config.min_trial_queries
        )
        if not enough:
            return Decision(None, consumed=False)
        if self.phase == "hold":
            return self._watch_for_drift(policy, obs)
        if self._load_moved_since_round_began(obs):
            # Results at another load do not rank against this one: start the round
            # again, at the load now. From a B trial in force, whose measure is this
            # load's first; from the best policy known if a trial of another knob is in
            # force: bench tuning runs E quiet 3 and F quiet 2 (2026-12-03) went
            # through every B with the merge delay, or two threads per run, that were
            # on trial when the load stepped, and lost 20 s to it. From one B cheaper
            # than the best known if the load rose and the trial in force is not.
            base, least = self._round_start(self.incumbent, self.round_qps, obs.qps)
            if (
                self.phase == "b"
                and _split_size(policy) >= least
                and not self._cheaper(base.batch_size, policy.batch_size)
            ):
                base = policy  # a B trial the round may try, and no dearer per item
            if not self._same_knobs(policy, base):
                note = self._new_round_note(base, least, self.round_qps, obs.qps)
                self._start_round(base, least)
                return Decision(base, consumed=True, note=note)
            self._start_round(policy, least)
        self.round_qps = self.round_qps or obs.qps
        self._record(knob, obs.latency_ms, obs)
        if self.challenger is not None:
            return self._settle_challenge(policy, obs)
        if self._escapes_overload(policy):
            # The incumbent could not keep up: its tail is the backlog this trial
            # inherited, not a measure to rank it against.
            self.results[self._knob(self.incumbent)] = INF
            self.incumbent, self.incumbent_ms = policy, obs.latency_ms
        elif obs.latency_ms < self.incumbent_ms * (1 - self._margin_to_replace(policy, obs)):
            if self._narrow_win(policy, obs):
                # The incumbent was measured trials ago, and this VM's speed moves by
                # more than the margin within a minute: measure it again now.
                self.challenger = (policy, obs.latency_ms)
                note = (
                    f"re-measuring the incumbent: the trial's {obs.latency_ms:.1f} ms beat "
                    f"its {self.incumbent_ms:.1f} ms by less than "
                    f"{self.config.confirm_within:g} margins"
                )
                return Decision(self.incumbent, consumed=True, note=note)
            self.incumbent, self.incumbent_ms = policy, obs.latency_ms
        return Decision(self._next(policy, obs), consumed=True)

    def _narrow_win(self, policy: Policy, obs: Observation) -> bool:
        """A win over an incumbent that meets the SLA by less than ``confirm_within`` times
        the margin: chance or a machine that sped up between the two windows could
        make it. (Over the SLA a better policy is taken at once.)"""
        if self.incumbent_ms > self.config.sla_ms:
            return False
        margin = self._margin_to_replace(policy, obs)
        within = self.config.confirm_within * margin
        return within > 0 and obs.latency_ms >= self.incumbent_ms * (1 - within)

    def _settle_challenge(self, policy: Policy, obs: Observation) -> Decision:
        """The incumbent, measured again just after a narrow win: the challenger
        replaces it only if it also beats this measure by the margin."""
        challenger, challenger_ms = self.challenger
        self.challenger = None
        self.incumbent_ms = obs.latency_ms
        confirmed = challenger_ms < obs.latency_ms * (1 - self._margin_to_replace(challenger, obs))
        if confirmed:
            self.incumbent, self.incumbent_ms = challenger, challenger_ms
        verdict = "confirmed" if confirmed else "not confirmed"
        note = (
            f"the incumbent re-measured: {describe(challenger)} at {challenger_ms:.1f} ms {verdict}"
        )
        return Decision(self._next(policy, obs), consumed=True, note=note)

    # -- phases -----------------------------------------------------------------------------

    def _start_round(self, policy: Policy, least_split: float = 0.0) -> None:
        self.phase, self.results = "b", {}
        self.least_split = least_split
        self.pending = [phase for phase in PHASE_KNOBS if phase != "b"]
        self.incumbent, self.incumbent_ms = policy, INF
        self.challenger = None
        self.busy = {k: v for k, v in self.busy.items() if k == _knobs(policy)}
        self.round_qps = 0.0
        self.round_queries, self.round_seconds = 0, 0.0

    def _round_start(self, best: Policy, was_qps: float, now_qps: float) -> tuple[Policy, float]:
        """The policy a round at a new load begins from, as its bar, and the smallest
        split size (B; no split counts as infinite) it may try. A busier server gains
        from a B that costs less per item, never from one that costs more. Where runs
        get cheaper per item as they grow (or nothing measured says otherwise), that is
        a larger B: the round begins one B larger than the best known, and tries no B
        below it. In bench tuning run H quiet 3 (2026-12-03) the round after the step
        began from the B that was best at half the load and held it (1.13x the best
        static p95): B = 512, 11% faster at the new load, had to beat it by a trial's
        noise margin. In H quiet 4 the round spent 13 s of the new load on B = 512, 256
        and 128, below the B = 1024 it held.

        Where the sub-batches measured say a larger B costs no less per item, the round
        begins from the B measured cheapest per item (the best known if it costs as
        little), and may try any B. DIN's 512- and 1024-item runs cost 1.06-1.18x and
        1.3-1.8x a 256-item run's per item; with the query mix, whose queries are mostly
        under 256 items, B = 256, 512 and 1024 cost within 5% of each other in the
        simulator fitted to those runs, and the larger B only serialise the large
        queries. Tuned DIN sweeps on 2026-12-05 moved up to
        B = 512 and 1024 at the rises of the load, and held them at rates where they
        shed queries; B = 256 held served 1.06x the plain server's capacity."""
        if now_qps <= was_qps or self._offloads_everything():
            return best, 0.0
        least = _split_size(best)
        cheapest = self._cheapest(self.config.batch_sizes)
        largest = max(self.config.batch_sizes, key=_split_size_of)
        if cheapest != largest and _split_size_of(cheapest) <= least:
            # Measured: no larger B costs less per item, so none gains from the load,
            # and a smaller one may cost as little and split the large queries.
            cheaper = self._cheaper(cheapest, best.batch_size)
            return (replace(best, batch_size=cheapest) if cheaper else best), 0.0
        larger = [b for b in self.config.batch_sizes if _split_size_of(b) > least]
        if not larger:
            return best, least
        return replace(best, batch_size=min(larger, key=_split_size_of)), least

    @staticmethod
    def _new_round_note(base: Policy, least: float, was_qps: float, now_qps: float) -> str:
        if not least and now_qps > was_qps:
            return (
                f"the load rose from {was_qps:.0f} to {now_qps:.0f} q/s: a new round, from "
                f"{describe(base)}: no larger B measured cheaper per item"
            )
        if not least:
            return f"the load moved from {was_qps:.0f} to {now_qps:.0f} q/s: a new round"
        smallest = "no split" if least == INF else f"B={least:.0f}"
        return (
            f"the load rose from {was_qps:.0f} to {now_qps:.0f} q/s: a new round, from "
            f"{describe(base)}, trying nothing below {smallest}"
        )

    def _load_moved_since_round_began(self, obs: Observation) -> bool:
        if not self.results or not self.round_qps:
            return False
        return abs(obs.qps - self.round_qps) > self.config.drift * self.round_qps

    def _knob(self, policy: Policy) -> int:
        return getattr(policy, PHASE_KNOBS.get(self.phase, "batch_size"))

    def _record(self, knob: int, latency_ms: float, obs: Observation) -> None:
        if obs.qps > 0:
            self.round_queries += obs.queries
            self.round_seconds += obs.queries / obs.qps
        self.results[knob] = latency_ms
        self.trials += 1
        self.history.append((self.phase, knob, latency_ms))

    def _overloaded(self) -> bool:
        """Every batch size tried this round was far over the SLA (or cut short)."""
        limit = self.config.guard_factor * self.config.sla_ms
        return bool(self.results) and min(self.results.values()) > limit

    def _escapes_overload(self, policy: Policy) -> bool:
        """A B cheaper per item tried while the incumbent is far over the SLA: kept
        whatever its tail, which is the incumbent's backlog as much as its own."""
        return (
            self.phase == "b"
            and self.incumbent_ms < INF
            and self.incumbent_ms > self.config.guard_factor * self.config.sla_ms
            and self._cheaper(policy.batch_size, self.incumbent.batch_size)
        )

    def _breaks_sla_badly(self, obs: Observation) -> bool:
        """Far over the SLA and over the incumbent (the SLA alone while the incumbent is
        unmeasured: a round's first trial is the policy in force, which may be what
        overloads the servers)."""
        incumbent = self.incumbent_ms if self.incumbent_ms < INF else 0.0
        limit = self.config.guard_factor * max(self.config.sla_ms, incumbent)
        return obs.queries >= self.config.min_trial_queries and obs.latency_ms > limit

    def _margin_to_replace(self, policy: Policy, obs: Observation) -> float:
        """How much lower a trial's tail must be to replace the incumbent: its sampling
        error, twice that for a candidate that spends more CPU per query (more
        sub-batches, more threads per run). Do no harm: that CPU is headroom lost the
        moment the load grows, while a gain within twice the noise is as likely chance
        (on the 2-core VM a B = 512 trial read 7% below B = 1024 under outside load,
        replaced it, and held at 1.21x the best static p95)."""
        margin = noise_margin(obs.queries)
        return 2 * margin if self._costlier(policy) else margin

    def _costlier(self, policy: Policy) -> bool:
        if self.phase == "b":
            return self._cheaper(self.incumbent.batch_size, policy.batch_size)
        if self.phase == "threads":  # 0: the pool's own, one thread per run as deployed
            return (policy.threads or 1) > (self.incumbent.threads or 1)
        return False

    def _clearly_worse(self, obs: Observation) -> bool:
        """A trial whose tail is already worse than the incumbent's by more than its
        sampling error cannot replace it (``step`` asks the same margin the other way):
        cut it at its first sample, so a bad candidate costs a couple of seconds of
        worse tail, not a whole trial. Only at the round's load: a busier window is
        worse for the load, not for the policy."""
        return (
            obs.queries >= self.config.min_trial_queries
            and self.incumbent_ms < INF
            and not self._load_moved_since_round_began(obs)
            and obs.latency_ms > self.incumbent_ms * (1 + noise_margin(obs.queries))
        )

    def _next(self, policy: Policy, obs: Observation) -> Policy | None:
        """The next trial of this phase, or move on; returns a policy to apply or None."""
        while self.phase != "hold":
            if self.phase != "t" and self._offloads_everything():
                # B, threads and the merge delay shape CPU runs, and no query reaches
                # the CPU pool: a trial of them measures nothing. Tune T first, then
                # come back to this phase if T now keeps queries on the CPU.
                if "t" in self.pending:
                    self.pending.insert(0, self.phase)
                self._next_phase()
                continue
            if self.phase == "b":
                value = self._next_batch_size(obs)
            elif self.phase == "t":
                value = self._next_threshold()
            else:
                value = self._explore(self._candidates(), None, None)
            if value is not None:
                return replace(self.incumbent, **{PHASE_KNOBS[self.phase]: value})
            self._next_phase()
        # hold: settle on the incumbent, remember the load it was tuned for: the round's
        # mean, as one short window's load (often a trial cut at 50 queries) is noisy
        self.base_qps = self.round_queries / self.round_seconds if self.round_seconds else obs.qps
        if self._same_knobs(policy, self.incumbent):
            return None
        return self.incumbent

    def _next_phase(self) -> None:
        """On to the next phase that has something to try; the incumbent, as measured,
        is its first result. While every query is offloaded, T comes first."""
        if self.phase == "threads":
            self._remember_threads_lost()
        self.results = {}
        if "t" in self.pending and self._offloads_everything():
            self.pending.remove("t")
            self.pending.insert(0, "t")
        self.pending = [phase for phase in self.pending if self._has_choices(phase)]
        self.phase = self.pending.pop(0) if self.pending else "hold"
        if self.phase != "hold":
            self.results[getattr(self.incumbent, PHASE_KNOBS[self.phase])] = self.incumbent_ms

    def _has_choices(self, phase: str) -> bool:
        if phase == "t":
            return self.config.gpu
        if phase == "threads" and len(self._candidates(phase)) < 2:
            now = self.incumbent.threads or 1
            why = {self._why_not_more_threads(k) for k in self.config.threads if k > now}
            if why - {None}:
                reasons = "; ".join(sorted(why - {None}))
                self._notes.append(f"more threads per run not tried: {reasons}")
        if phase in ("threads", "delay"):
            return len(self._candidates(phase)) >= 2
        return True

    def _offloads_everything(self) -> bool:
        """The incumbent's T sends every query to the GPU pool: T = 1, or at or below
        the smallest query seen (a query of T items or more is offloaded)."""
        t = self.incumbent.offload_threshold
        return self.config.gpu and (t == 1 or 0 < t <= self.min_items)

    def _candidates(self, phase: str = "") -> tuple[int, ...]:
        """A phase's values (this one's by default): 0 (the pools' own threads; no
        delay) and the config's, so that a round can always go back to 0."""
        phase = phase or self.phase
        chosen = self.config.threads if phase == "threads" else self.config.merge_delays_us
        if phase == "threads":
            now = self.incumbent.threads or 1
            chosen = tuple(k for k in chosen if k <= now or not self._why_not_more_threads(k))
        return tuple(sorted({0, *chosen}))

    def _why_not_more_threads(self, threads: int) -> str | None:
        """Why a trial of ``threads`` per run, more than the incumbent's, would only lose
        (None: it may win). Busy runs: fewer at once would queue. A loss at this load or
        a lighter one: more load only takes more of the cores the threads would need
        (every round of the 2026-12-03 tuning runs tried two threads on RMC1, which a
        second thread does not speed up, and lost 2-5 s of tail to it each time)."""
        busy = self.busy.get(_knobs(self.incumbent))
        if busy is not None and busy >= self.config.busy_for_more_threads:
            return f"the runs were busy {busy:.0%} of the time"
        lost, load = self.threads_lost_at.get(threads), self._round_load()
        if lost is not None and load >= lost * (1 - self.config.drift):
            return f"{threads} threads lost at {lost:.0f} q/s and the load is {load:.0f} q/s"
        return None

    def _round_load(self) -> float:
        return self.round_queries / self.round_seconds if self.round_seconds else self.round_qps

    def _remember_threads_lost(self) -> None:
        """At the end of a threads phase: every count above the incumbent's lost at this
        load; the incumbent's own count wins here, whatever it lost before."""
        now, load = self.incumbent.threads or 1, self._round_load()
        for threads, _ms in self.results.items():
            if (threads or 1) > now and load > 0:
                self.threads_lost_at[threads] = min(self.threads_lost_at.get(threads, INF), load)
        self.threads_lost_at.pop(self.incumbent.threads, None)

    def _next_batch_size(self, obs: Observation) -> int | None:
        candidates = tuple(
            b for b in self.config.batch_sizes if _split_size_of(b) >= self.least_split
        )
        best = min(self.results, key=self.results.get) if self.results else None
        model = ServiceModel.fit(self.service)
        if best is None or not candidates:  # none: a load rise on no split, or a B above all
            return None
        cheapest = self._cheapest(candidates)
        if self._overloaded() and cheapest not in self.results:
            # Every result so far far over the SLA: queues are growing, and a climb one
            # neighbour at a time would spend a trial at each overloaded step. Go at once
            # to the cheapest policy per item; the climb goes on from there if another
            # B pays.
            return cheapest
        if model is not None:
            predicted = {b: model.predict_latency(b, obs) for b in candidates}
            untried = [b for b in candidates if b not in self.results and self._within_reach(b)]
            if untried:
                # Ties go to the larger B: fewer sub-batches, less CPU per query.
                guess = min(untried, key=lambda b: (predicted[b], -_split_size_of(b)))
                # Jump to the predicted best if the model expects it to beat what we have.
                if predicted[guess] < predicted.get(best, INF) * (1 - self.config.improvement):
                    return guess
        return self._explore(candidates, model, obs)

    def _cost_per_item(self, batch_size: int) -> float | None:
        """What B's sub-batches cost per item, as measured (None: too few measured)."""
        items, ms, n = self.service.get(batch_size, (0.0, 0.0, 0))
        return ms / items if n >= COST_SUBBATCHES and items > 0 else None

    def _cheaper(self, a: int, b: int) -> bool:
        """B = ``a`` costs less per item than B = ``b``: as measured where both are (two
        within COST_TOLERANCE cost the same), else the larger (fewer sub-batches)."""
        cost_a, cost_b = self._cost_per_item(a), self._cost_per_item(b)
        if cost_a is not None and cost_b is not None:
            return cost_a * (1 + COST_TOLERANCE) < cost_b
        return _split_size_of(a) > _split_size_of(b)

    def _cheapest(self, candidates) -> int:
        """The candidate B likely cheapest per item: the smallest measured within
        COST_TOLERANCE of the cheapest measured (a larger one gains nothing), unless that
        is the largest measured, the runs still getting cheaper there: then the largest
        candidate (fewest sub-batches)."""
        largest = max(candidates, key=_split_size_of)
        measured = {b: cost for b in candidates if (cost := self._cost_per_item(b)) is not None}
        if not measured:
            return largest
        least = min(measured.values())
        near = [b for b, cost in measured.items() if cost <= least * (1 + COST_TOLERANCE)]
        smallest_near = min(near, key=_split_size_of)
        if smallest_near == max(measured, key=_split_size_of):
            return largest
        return smallest_near

    def _within_reach(self, batch_size: int) -> bool:
        """The cost model may jump to any larger B, but to a smaller one only one step
        below the smallest B tried this round, and only while that one measured within
        the plateau of the best: below what was measured it extrapolates (fitted with no
        overhead, it predicts every smaller B a little faster), and a jump from B = 1024
        to B = 4 on a stand-in run multiplied the sub-batches by 68 under load."""
        smallest = min(self.results, key=_split_size_of)
        if _split_size_of(batch_size) >= _split_size_of(smallest):
            return True
        if self.results[smallest] > min(self.results.values()) * (1 + self.config.plateau):
            # The smallest B tried already measured worse than the best: smaller still
            # only adds sub-batches (run E quiet 3 of 2026-12-03 went on from a losing
            # B = 256 down to B = 16, a step at a time, each "predicted" faster).
            return False
        below = [b for b in self.config.batch_sizes if _split_size_of(b) < _split_size_of(smallest)]
        return batch_size == max(below, key=_split_size_of)

    def _next_threshold(self) -> int | None:
        """Every threshold that routes queries differently, once, nearest the incumbent
        first. Tail latency against T has long flat stretches (at or below the smallest
        query every query is offloaded; above the largest none is), on which a climb stops
        at the first noisy trial; there are few enough thresholds to try them all, and a
        clearly worse one is cut at its first sample."""
        useful = self._useful_thresholds()
        untried = [t for t in useful if t not in self.results]
        if not untried:
            return None
        ordered = sorted(useful, key=_threshold_order)
        keys = [_threshold_order(t) for t in ordered]
        here = _threshold_order(self._knob(self.incumbent))
        # The incumbent's place in that order: between two when it is not one of them.
        place = bisect.bisect_left(keys, here) - (0 if here in keys else 0.5)
        return min(untried, key=lambda t: (abs(ordered.index(t) - place), -t))

    def _useful_thresholds(self) -> tuple[int, ...]:
        """Never (0) and the thresholds between the smallest and the largest query seen:
        one at or below the smallest routes like always-offload (T = 1), one above the
        largest like never."""
        low, high = self.min_items, self.max_items
        return tuple(
            t
            for t in self.config.thresholds
            if t == 0 or ((not high or t <= high) and (not low or t > low))
        )

    def _explore(self, candidates, model, obs) -> int | None:
        """An untried neighbour of a good value: the best, or one within the plateau
        tolerance of it (so flat stretches are crossed instead of stopping the climb)."""
        best_ms = min(self.results.values())
        good = sorted(
            (ms, value)
            for value, ms in self.results.items()
            if ms <= best_ms * (1 + self.config.plateau)
        )
        for _, value in good:
            for neighbour in _neighbours(candidates, value):
                if neighbour in self.results:
                    continue
                if model is None or model.predict_latency(neighbour, obs) < INF:
                    return neighbour
        return None

    def _watch_for_drift(self, policy: Policy, obs: Observation) -> Decision:
        load_moved = abs(obs.qps - self.base_qps) > self.config.drift * max(self.base_qps, 1e-9)
        # One short window's load is noisy: a move counts once two windows in a row show it.
        self.drifted = self.drifted + 1 if load_moved else 0
        load_moved = self.drifted >= DRIFT_WINDOWS
        # So does one window over the SLA, unless far over it: a few slow tail queries.
        over = obs.latency_ms > self.config.sla_ms >= self.incumbent_ms
        self.broken = self.broken + 1 if over else 0
        far_over = obs.latency_ms > self.config.guard_factor * self.config.sla_ms
        slo_broken = self.broken >= DRIFT_WINDOWS or (over and far_over)
        if load_moved or slo_broken:
            self.drifted = self.broken = 0
            base, least = (
                self._round_start(policy, self.base_qps, obs.qps) if load_moved else (policy, 0.0)
            )
            note = (
                self._new_round_note(base, least, self.base_qps, obs.qps)
                if load_moved
                else f"the tail broke the SLA at {obs.latency_ms:.1f} ms: a new round"
            )
            if base is not policy:
                self._start_round(base, least)
                return Decision(base, consumed=True, note=note)
            self._start_round(policy, least)
            self._record(self._knob(policy), obs.latency_ms, obs)
            self.incumbent_ms = obs.latency_ms
            return Decision(self._next(policy, obs), consumed=True, note=note)
        return Decision(None, consumed=True)

    @staticmethod
    def _same_knobs(a: Policy, b: Policy) -> bool:
        return _knobs(a) == _knobs(b)


def _knobs(policy: Policy) -> tuple:
    return tuple(getattr(policy, knob) for knob in PHASE_KNOBS.values())


def _split_size(policy: Policy) -> float:
    return _split_size_of(policy.batch_size)


def _split_size_of(batch_size: int) -> float:
    return batch_size or INF  # 0: no split, the fewest sub-batches of all


def _threshold_order(t: int) -> float:
    """T sorted by how many queries it keeps on the CPU: never (0) last."""
    return INF if t == 0 else t


def _neighbours(candidates: tuple[int, ...], value: int) -> list[int]:
    """The candidates next to ``value`` (larger first), or the nearest ones if off-grid."""
    ordered = sorted(candidates)
    if value in ordered:
        i = ordered.index(value)
        return [ordered[j] for j in (i + 1, i - 1) if 0 <= j < len(ordered)]
    above = [c for c in ordered if c > value][:1]
    below = [c for c in ordered if c < value][-1:]
    return above + below
