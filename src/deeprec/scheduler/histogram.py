"""Base-2 exponential histograms (OpenTelemetry's): merging across scales, quantiles.

A bucket ``i`` at scale ``s`` holds values in (base**i, base**(i+1)] with
base = 2**(2**-s). Lowering the scale by ``k`` maps bucket ``i`` to ``i >> k``, so
histograms from many frontends merge exactly at their smallest scale.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ExpHistogram:
    scale: int
    buckets: Counter = field(default_factory=Counter)  # index -> count (positive range)
    zero_count: int = 0
    count: int = 0
    sum: float = 0.0

    @classmethod
    def from_otlp(cls, point) -> ExpHistogram:
        """From an OTLP ExponentialHistogramDataPoint (negative values are ignored)."""
        buckets = Counter()
        offset = point.positive.offset
        for i, n in enumerate(point.positive.bucket_counts):
            if n:
                buckets[offset + i] += n
        return cls(point.scale, buckets, point.zero_count, point.count, point.sum)

    @classmethod
    def of_values(cls, values, scale: int = 6) -> ExpHistogram:
        """Build one from raw values (used by tests and the simulator)."""
        h = cls(scale)
        for v in values:
            h.count += 1
            h.sum += v
            if v <= 0:
                h.zero_count += 1
            else:
                h.buckets[bucket_index(v, scale)] += 1
        return h

    def downscaled(self, scale: int) -> ExpHistogram:
        if scale > self.scale:
            raise ValueError("can only lower the scale")
        shift = self.scale - scale
        buckets = Counter()
        for index, n in self.buckets.items():
            buckets[index >> shift] += n
        return ExpHistogram(scale, buckets, self.zero_count, self.count, self.sum)

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1); the bucket's geometric middle, so error <= half a bucket."""
        if self.count == 0:
            return math.nan
        rank = q * self.count
        seen = self.zero_count
        if rank <= seen:
            return 0.0
        base = 2.0 ** (2.0**-self.scale)
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return base ** (index + 0.5)
        return base ** (max(self.buckets) + 1)


def bucket_index(value: float, scale: int) -> int:
    """Index of the bucket (base**i, base**(i+1)] holding ``value``."""
    index = math.ceil(math.log2(value) * 2.0**scale) - 1
    return index


def merge(histograms) -> ExpHistogram:
    histograms = list(histograms)
    if not histograms:
        return ExpHistogram(20)
    scale = min(h.scale for h in histograms)
    out = ExpHistogram(scale)
    for h in histograms:
        h = h.downscaled(scale) if h.scale != scale else h
        out.buckets.update(h.buckets)
        out.zero_count += h.zero_count
        out.count += h.count
        out.sum += h.sum
    return out
