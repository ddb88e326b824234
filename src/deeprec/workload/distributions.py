"""The distributions of production-like load (pure NumPy; every draw takes a Generator).

- arrivals: a Poisson process, i.e. exponential gaps at a rate;
- query sizes: the MLPerf DLRM server mix, the DeepRecSys lognormal, a fixed N, or the
  sizes listed in a file (e.g. taken from a production log);
- embedding ids: a bounded power law (Zipf-like) over a table's rows, or uniform; the
  power law's hot set can drift (the hottest ids cool off and the next ones move up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np

# -- arrivals -------------------------------------------------------------------------------


def exponential_gaps(rate: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """Gaps (s) between ``count`` arrivals of a Poisson process of ``rate`` per second."""
    if rate <= 0:
        raise ValueError(f"arrival rate must be > 0, got {rate}")
    return rng.exponential(1.0 / rate, size=count)


def poisson_arrivals(rate: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (s from 0) of a Poisson process of ``rate``/s, all < ``duration``."""
    if duration < 0:
        raise ValueError(f"duration must be >= 0, got {duration}")
    expected = rate * duration
    times = np.empty(0)
    last = 0.0
    # Draw in chunks a few standard deviations above the mean: one chunk nearly always does.
    while last < duration:
        chunk = int(expected + 6 * math.sqrt(expected) + 16)
        more = last + np.cumsum(exponential_gaps(rate, chunk, rng))
        times = np.concatenate([times, more])
        last = float(more[-1])
    return times[times < duration]


# -- query sizes ----------------------------------------------------------------------------

# MLPerf DLRM server scenario: a query's size is one of these 20 quantiles, uniformly
# (MLPerf derived them from the production distribution in the DeepRecSys paper).
MLPERF_QUANTILES = (100, 100, *([200] * 12), 300, 300, 400, 500, 600, 700)


@dataclass(frozen=True)
class MLPerfSizes:
    name: str = "mlperf"
    quantiles: tuple[int, ...] = MLPERF_QUANTILES

    @property
    def max(self) -> int:
        return max(self.quantiles)

    @property
    def mean(self) -> float:
        return float(np.mean(self.quantiles))

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(np.asarray(self.quantiles, dtype=np.int64), size=count)

    def quantile(self, p: float) -> int:
        return self.quantiles[min(int(p * len(self.quantiles)), len(self.quantiles) - 1)]


@dataclass(frozen=True)
class LognormalSizes:
    """DeepRecSys: sizes lognormal(mu, sigma), rounded and clipped to [low, high]."""

    mu: float = 5.1
    sigma: float = 0.2
    low: int = 1
    high: int = 1024
    name: str = "lognormal"

    @property
    def max(self) -> int:
        return self.high

    @property
    def mean(self) -> float:
        return math.exp(self.mu + self.sigma**2 / 2)  # before rounding and clipping

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        sizes = np.rint(rng.lognormal(self.mu, self.sigma, size=count))
        return np.clip(sizes, self.low, self.high).astype(np.int64)

    def quantile(self, p: float) -> int:
        size = round(math.exp(self.mu + self.sigma * NormalDist().inv_cdf(p)))
        return min(max(size, self.low), self.high)


@dataclass(frozen=True)
class FixedSizes:
    items: int
    name: str = "fixed"

    def __post_init__(self):
        if self.items < 1:
            raise ValueError(f"a query needs at least 1 item, got {self.items}")

    @property
    def max(self) -> int:
        return self.items

    @property
    def mean(self) -> float:
        return float(self.items)

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(count, self.items, dtype=np.int64)

    def quantile(self, p: float) -> int:
        return self.items


@dataclass(frozen=True)
class FileSizes:
    """The empirical distribution of the sizes listed in a file (each equally likely).

    The file holds positive integers separated by whitespace or commas; ``#`` starts a
    comment. A size listed k times is k times as likely, so a log of real query sizes can
    be used as it is.
    """

    path: str
    sizes: tuple[int, ...] = field(default=(), repr=False)
    name: str = "file"

    def __post_init__(self):
        if not self.sizes:
            object.__setattr__(self, "sizes", read_sizes(self.path))

    @property
    def max(self) -> int:
        return max(self.sizes)

    @property
    def mean(self) -> float:
        return float(np.mean(self.sizes))

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(np.asarray(self.sizes, dtype=np.int64), size=count)

    def quantile(self, p: float) -> int:
        ordered = sorted(self.sizes)
        return ordered[min(int(p * len(ordered)), len(ordered) - 1)]


def read_sizes(path: str) -> tuple[int, ...]:
    """Query sizes from a text file; a clear ValueError for anything else."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"query sizes file {path}: {err.strerror or err}") from None
    sizes = []
    for number, line in enumerate(text.splitlines(), 1):
        for token in line.split("#", 1)[0].replace(",", " ").split():
            try:
                size = int(token)
            except ValueError:
                raise ValueError(
                    f"query sizes file {path}, line {number}: {token!r} is not an integer"
                ) from None
            if size < 1:
                raise ValueError(
                    f"query sizes file {path}, line {number}: a query needs at least 1 "
                    f"item, got {size}"
                )
            sizes.append(size)
    if not sizes:
        raise ValueError(f"query sizes file {path} lists no sizes")
    return tuple(sizes)


QuerySizes = MLPerfSizes | LognormalSizes | FixedSizes | FileSizes
SIZE_CHOICES = "mlperf, lognormal, a fixed item count N, or file:PATH"


def stratified_sizes(sizes: QuerySizes, count: int) -> np.ndarray:
    """``count`` sizes at the midpoints of equal-probability strata of the distribution.

    Drawing uniformly from them follows the distribution (exactly for the MLPerf mix when
    ``count`` is a multiple of 20), with no sampling noise in the mix itself.
    """
    return np.array([sizes.quantile((i + 0.5) / count) for i in range(count)], dtype=np.int64)


def parse_sizes(text: str) -> QuerySizes:
    """``mlperf`` | ``lognormal`` | ``N`` (every query N items) | ``file:PATH``."""
    if text == "mlperf":
        return MLPerfSizes()
    if text == "lognormal":
        return LognormalSizes()
    if text.startswith("file:"):
        return FileSizes(text.removeprefix("file:"))
    try:
        return FixedSizes(int(text.removeprefix("fixed:")))
    except ValueError:
        raise ValueError(f"query sizes {text!r}: expected {SIZE_CHOICES}") from None


# -- embedding ids --------------------------------------------------------------------------


@dataclass(frozen=True)
class UniformIds:
    rows: int

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.rows, size=count, dtype=np.int64)

    def drift(self, ids: np.ndarray, ranks: int) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64)  # no hot set to move


DEFAULT_EXPONENT = 1.05
# Ranks up to this are drawn from their exact probabilities; beyond it the sum over ranks is
# replaced by an integral (midpoint rule: relative error ~ s(s+1)/24/k^2, < 1e-6 here).
_EXACT_RANKS = 1024
_INT64_HEADROOM = 1 << 62


@dataclass(frozen=True)
class PowerLawIds:
    """Ids with P(rank k) proportional to k^-exponent, k = 1..rows (a bounded Zipf law).

    Bounded and O(1) in memory for any table size: an exact table for the first ranks and
    inverse-CDF sampling of the continuous tail. Ranks map to ids by a seeded affine
    permutation (a*r + b mod rows, a coprime with rows), so the hot ids are spread over
    the table instead of being ids 0..k, with no per-row permutation array.
    """

    rows: int
    exponent: float = DEFAULT_EXPONENT
    seed: int = 0
    _head: np.ndarray = field(init=False, repr=False, compare=False)  # cumulative weights
    _tail_mass: float = field(init=False, repr=False, compare=False)
    _a: int = field(init=False, repr=False, compare=False)
    _b: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.rows < 1:
            raise ValueError(f"a table needs at least 1 row, got {self.rows}")
        if self.exponent < 0:
            raise ValueError(f"power-law exponent must be >= 0, got {self.exponent}")
        head = min(self.rows, _EXACT_RANKS)
        weights = np.arange(1, head + 1, dtype=np.float64) ** -self.exponent
        object.__setattr__(self, "_head", np.cumsum(weights))
        object.__setattr__(self, "_tail_mass", self._integral(head + 0.5, self.rows + 0.5))
        rng = np.random.default_rng([self.seed, self.rows])
        # Keep a*(rows-1) + b inside int64 for any rows count.
        a_max = max(2, min(self.rows, _INT64_HEADROOM // self.rows))
        a = 1
        for _ in range(64):  # coprimes are dense: a few tries nearly always suffice
            candidate = int(rng.integers(1, a_max)) if a_max > 1 else 1
            if math.gcd(candidate, self.rows) == 1:
                a = candidate
                break
        object.__setattr__(self, "_a", a)
        object.__setattr__(self, "_b", int(rng.integers(0, self.rows)))

    def _integral(self, lo: float, hi: float) -> float:
        if hi <= lo:
            return 0.0
        s = self.exponent
        if abs(s - 1.0) < 1e-12:
            return math.log(hi / lo)
        return (hi ** (1 - s) - lo ** (1 - s)) / (1 - s)

    @property
    def total_mass(self) -> float:
        return float(self._head[-1]) + self._tail_mass

    def head_share(self, k: int) -> float:
        """Probability that an id is one of the ``k`` hottest (this sampler's exact law)."""
        k = min(k, self.rows)
        if k <= 0:
            return 0.0
        head = len(self._head)
        if k <= head:
            return float(self._head[k - 1]) / self.total_mass
        return (float(self._head[-1]) + self._integral(head + 0.5, k + 0.5)) / self.total_mass

    def ids_of_ranks(self, ranks: np.ndarray) -> np.ndarray:
        """Rank 1 is the hottest id; ranks are 1..rows."""
        ranks = np.asarray(ranks, dtype=np.int64)
        return (self._a * (ranks - 1) + self._b) % self.rows

    def sample_ranks(self, count: int, rng: np.random.Generator) -> np.ndarray:
        head_mass = float(self._head[-1])
        u = rng.random(count) * self.total_mass
        ranks = np.empty(count, dtype=np.int64)
        in_head = u < head_mass
        ranks[in_head] = np.searchsorted(self._head, u[in_head], side="right") + 1
        if not in_head.all():
            v = u[~in_head] - head_mass
            lo = len(self._head) + 0.5
            s = self.exponent
            if abs(s - 1.0) < 1e-12:
                x = lo * np.exp(v)
            else:
                x = (lo ** (1 - s) + (1 - s) * v) ** (1 / (1 - s))
            ranks[~in_head] = np.clip(np.floor(x + 0.5), len(self._head) + 1, self.rows)
        return np.minimum(ranks, self.rows)  # float edge cases never leave the table

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return self.ids_of_ranks(self.sample_ranks(count, rng))

    def drift(self, ids: np.ndarray, ranks: int) -> np.ndarray:
        """The same draws after the hot set slid by ``ranks``: the id of rank r becomes
        the id of rank r + ranks (mod rows), so the ``ranks`` hottest ids turn coldest and
        every other id moves up. Ranks map to ids affinely, so this is one modular add."""
        shift = (self._a * (ranks % self.rows)) % self.rows
        return (np.asarray(ids, dtype=np.int64) + shift) % self.rows


IdDistribution = UniformIds | PowerLawIds
ID_CHOICES = ("powerlaw", "uniform")


def parse_exponents(text: str) -> float | dict[str, float]:
    """Zipf exponents: ``S`` for every table, or ``S,TABLE=S2,...`` per table, where the
    leading ``S`` (stored under ``*``) covers the tables not named."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        table, _, value = part.rpartition("=")
        try:
            exponent = float(value)
        except ValueError:
            raise ValueError(
                f"exponents {text!r}: {part!r} is neither S nor TABLE=S (S a number >= 0)"
            ) from None
        if exponent < 0:
            raise ValueError(f"exponents {text!r}: {part!r} is negative")
        key = table.strip() or "*"
        if key in out:
            raise ValueError(f"exponents {text!r}: {key} is given twice")
        out[key] = exponent
    return out["*"] if list(out) == ["*"] else out


def id_distribution(
    kind: str, rows: int, exponent: float = DEFAULT_EXPONENT, seed: int = 0
) -> IdDistribution:
    if kind == "powerlaw":
        return PowerLawIds(rows, exponent, seed)
    if kind == "uniform":
        return UniformIds(rows)
    raise ValueError(f"id distribution {kind!r}: expected one of {', '.join(ID_CHOICES)}")
