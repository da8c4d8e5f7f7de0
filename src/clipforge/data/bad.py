"""Bad samples: the error raised when there are too many, and the tally that decides it.

A bad sample (corrupt or truncated image, missing/empty/undecodable caption, unreadable file or shard) never
stops training by itself: it is skipped, replaced, and counted under the name of the file or shard it came from.
`BadTally` sums those counts over everything a `TrainData` has yielded and raises `DataError` once the bad
fraction exceeds `max_bad_fraction` (after at least `min_samples` samples), naming the worst offenders, so that
a broken dataset fails loudly instead of training on the leftovers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping


class DataError(RuntimeError):
    """The training data cannot be used: too many bad samples, or a source with no usable sample at all."""


class BadSample(Exception):
    """One sample is unusable; `name` is the file or shard it is counted under. Internal to the data layer."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class BadTally:
    """Running count of good and bad samples, keyed by file/shard name, with the max_bad_fraction check."""

    def __init__(self, max_bad_fraction: float, min_samples: int = 100, show: int = 5) -> None:
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.show = show
        self.good = 0
        self.bad: Counter[str] = Counter()

    @property
    def seen(self) -> int:
        """Samples seen so far, good and bad."""
        return self.good + sum(self.bad.values())

    def add(self, good: int, bad: Mapping[str, int]) -> None:
        """Record one batch (`good` samples used, `bad` skipped) and raise DataError if over the limit."""
        self.good += good
        self.bad.update(bad)
        seen, n_bad = self.seen, sum(self.bad.values())
        if seen >= self.min_samples and n_bad > self.max_bad_fraction * seen:
            worst = ", ".join(f"{name} ({count})" for name, count in self.bad.most_common(self.show))
            more = len(self.bad) - self.show
            tail = f" and {more} more" if more > 0 else ""
            raise DataError(
                f"{n_bad} of {seen} samples were bad ({n_bad / seen:.1%}), over max_bad_fraction="
                f"{self.max_bad_fraction}; worst: {worst}{tail}"
            )
