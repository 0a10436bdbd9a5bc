"""Intervals and verdicts for comparing two models' accuracies: numbers in, numbers out.

Every comparison the harness prints is built from these functions (:mod:`harness.report.compare`
selects the rows; this module does the statistics, with ``scipy.stats`` for the t quantiles and
the bootstrap). Differences are ``A - B`` in accuracy *points* (percent).

The verdict rule (:func:`verdict`), declared before any data is seen:

- **equivalent within +-margin** when the 90% interval of ``A - B`` lies inside
  ``(-margin, +margin)`` (two one-sided tests at 5% each, TOST);
- otherwise **A better** when the 95% interval lies above 0, **B better** when below;
- otherwise **inconclusive** (also whenever no interval can be formed, e.g. one seed).

Two experiments paired by seed are judged on the envelope of the paired t-interval and the
seed x image bootstrap (:func:`envelope`): with three seeds a percentile bootstrap is about a
third as wide as the t-interval, and a verdict must not rest on it alone.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Verdict names, as printed.
A_BETTER, B_BETTER, EQUIVALENT, INCONCLUSIVE = "A better", "B better", "equivalent", "inconclusive"
#: Bootstrap resamples (percentile intervals); fixed seed so that a report regenerates equal.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% and 90% intervals (points) and how they were formed."""

    estimate: float
    low95: float
    high95: float
    low90: float
    high90: float
    method: str
    n: int

    @property
    def half_width(self) -> float:
        return (self.high95 - self.low95) / 2


def t_interval(differences: Sequence[float]) -> Interval | None:
    """The paired t-interval of the mean of ``differences`` (one per seed); None below two."""
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n < 2:
        return None
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))
    q95, q90 = float(stats.t.ppf(0.975, n - 1)), float(stats.t.ppf(0.95, n - 1))
    return Interval(
        mean,
        mean - q95 * se,
        mean + q95 * se,
        mean - q90 * se,
        mean + q90 * se,
        f"paired t over {n} seeds",
        n,
    )


def welch_interval(
    mean: float, se_a: float, df_a: int, se_b: float, df_b: int, n: int, method: str
) -> Interval | None:
    """The interval of a difference of two independent means (standard errors ``se_a``,
    ``se_b`` with ``df_a``, ``df_b`` degrees of freedom; Welch-Satterthwaite); None when a
    standard error is unknown."""
    from scipy import stats

    if min(df_a, df_b) < 1 or not (math.isfinite(se_a) and math.isfinite(se_b)):
        return None
    var = se_a**2 + se_b**2
    if var == 0:
        return Interval(mean, mean, mean, mean, mean, method, n)
    df = var**2 / (se_a**4 / df_a + se_b**4 / df_b)
    half95 = float(stats.t.ppf(0.975, df)) * math.sqrt(var)
    half90 = float(stats.t.ppf(0.95, df)) * math.sqrt(var)
    return Interval(mean, mean - half95, mean + half95, mean - half90, mean + half90, method, n)


def envelope(first: Interval | None, second: Interval | None) -> Interval | None:
    """The wider of two intervals of one estimate (each bound the farther one; the estimate
    of ``first``): a verdict on it holds under both. A percentile bootstrap over three seeds
    sees only ten distinct resampled means and comes out far narrower than the t-interval
    (about a third of its width), so pairwise verdicts take the envelope, not the bootstrap
    alone."""
    if first is None or second is None:
        return first if second is None else second
    return Interval(
        first.estimate,
        min(first.low95, second.low95),
        max(first.high95, second.high95),
        min(first.low90, second.low90),
        max(first.high90, second.high90),
        f"the wider of {first.method} and {second.method}",
        min(first.n, second.n),
    )


def _percentile_bootstrap(
    samples: tuple[np.ndarray, ...],
    statistic: Callable[..., float],
    estimate: float,
    method: str,
    n: int,
) -> Interval:
    """scipy's percentile bootstrap (each sample resampled independently) at 95% and 90%."""
    from scipy import stats

    if all(np.ptp(s) == 0 for s in samples) or all(len(s) < 2 for s in samples):
        return Interval(estimate, estimate, estimate, estimate, estimate, method, n)
    bounds = []
    for level in (0.95, 0.90):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate resamples of tiny samples
            result = stats.bootstrap(
                samples,
                statistic,
                paired=False,
                vectorized=False,
                n_resamples=BOOTSTRAP_RESAMPLES,
                confidence_level=level,
                method="percentile",
                rng=np.random.default_rng(BOOTSTRAP_SEED),
            )
        bounds.append(
            (float(result.confidence_interval.low), float(result.confidence_interval.high))
        )
    (l95, h95), (l90, h90) = bounds
    return Interval(estimate, l95, h95, l90, h90, method, n)


def bootstrap_seeds_and_images(correct_a: np.ndarray, correct_b: np.ndarray) -> Interval:
    """The interval of mean accuracy ``A - B`` (points) resampling seeds and test images.

    ``correct_a``, ``correct_b``: ``[seeds, images]`` per-image correctness (a fraction for a
    random mode averaged over repeats), row ``s`` of both from seed ``s``, columns the same test
    images. Seeds and images are resampled independently (the same images for every seed and
    both models, as they were evaluated), so the interval carries both the training noise and
    the test set's sampling noise.
    """
    diff = 100.0 * (np.asarray(correct_a, float) - np.asarray(correct_b, float))
    seeds, images = diff.shape

    method = f"bootstrap over {seeds} seeds x {images} images"
    if np.ptp(diff) == 0:
        value = float(diff.mean())
        return Interval(value, value, value, value, value, method, seeds)
    if seeds < 2:  # one seed: only the images can be resampled (scipy needs two of each)

        def images_only(image_index: np.ndarray) -> float:
            return float(diff[:, image_index.astype(int)].mean())

        samples: tuple[np.ndarray, ...] = (np.arange(images, dtype=float),)
        return _percentile_bootstrap(
            samples, images_only, float(diff.mean()), f"bootstrap over {images} images", seeds
        )

    def statistic(seed_index: np.ndarray, image_index: np.ndarray) -> float:
        rows = diff[seed_index.astype(int)]
        return float(rows[:, image_index.astype(int)].mean())

    samples = (np.arange(seeds, dtype=float), np.arange(images, dtype=float))
    return _percentile_bootstrap(samples, statistic, float(diff.mean()), method, seeds)


def bootstrap_groups(
    groups: Sequence[np.ndarray], statistic: Callable[..., float], method: str
) -> Interval:
    """The percentile interval of ``statistic(*groups)``, each group (e.g. one experiment's
    per-seed accuracies) resampled on its own."""
    samples = tuple(np.asarray(g, dtype=float) for g in groups)
    n = min(len(s) for s in samples)
    return _percentile_bootstrap(samples, statistic, float(statistic(*samples)), method, n)


def binomial_noise(accuracy: float, images: int) -> tuple[float, float]:
    """The test set's sampling noise of one accuracy (fraction) on ``images`` images: its
    standard error and 95% half-width, in points."""
    se = 100.0 * math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(images, 1))
    return se, 1.959963984540054 * se


def verdict(interval: Interval | None, margin: float) -> str:
    """The declared rule of the module docstring."""
    if interval is None or not all(
        math.isfinite(v) for v in (interval.low95, interval.high95, interval.low90, interval.high90)
    ):
        return INCONCLUSIVE
    if -margin < interval.low90 and interval.high90 < margin:
        return EQUIVALENT
    if interval.low95 > 0:
        return A_BETTER
    if interval.high95 < 0:
        return B_BETTER
    return INCONCLUSIVE


def seeds_needed(differences: Sequence[float], margin: float, limit: int = 1000) -> int | None:
    """Seeds a paired t-interval would need, at the observed mean and spread of
    ``differences``, for a clear verdict (better or equivalent); None if none up to ``limit``
    would (the mean sits on a boundary) or the spread is unknown."""
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return None
    mean, sd = abs(float(d.mean())), float(d.std(ddof=1))
    if sd == 0:
        return len(d)
    for n in range(2, limit + 1):
        se = sd / math.sqrt(n)
        if mean < margin and stats.t.ppf(0.95, n - 1) * se < margin - mean:
            return n
        if stats.t.ppf(0.975, n - 1) * se < mean:
            return n
    return None


def curve_gap(
    flops_a: Sequence[float],
    acc_a: Sequence[float],
    flops_b: Sequence[float],
    acc_b: Sequence[float],
) -> tuple[float, float, float]:
    """The mean gap ``A - B`` between two piecewise-linear accuracy/FLOPs curves over their
    common FLOPs range (the area between them divided by the range's width), and that range.
    Points are sorted by FLOPs; a range of zero width gives NaN."""
    fa, aa = _sorted(flops_a, acc_a)
    fb, ab = _sorted(flops_b, acc_b)
    low, high = max(fa[0], fb[0]), min(fa[-1], fb[-1])
    if not high > low:
        return math.nan, low, high
    grid = np.unique(
        np.concatenate([[low, high], fa[(fa > low) & (fa < high)], fb[(fb > low) & (fb < high)]])
    )
    gap = np.interp(grid, fa, aa) - np.interp(grid, fb, ab)
    area = float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(grid)))
    return area / (high - low), float(low), float(high)


def linear_weights(statistic: Callable[[Sequence[float]], float], count: int) -> np.ndarray:
    """The weights ``w`` of a statistic that is linear in ``count`` means
    (``statistic(m) = w . m``), read off by evaluating it on unit vectors; a statistic that is
    not linear (its value at the zero vector is not 0) raises ValueError."""
    if abs(statistic([0.0] * count)) > 1e-12:
        raise ValueError("the statistic is not linear in the means")
    return np.array([statistic(list(np.eye(count)[i])) for i in range(count)], dtype=float)


def linear_interval(
    weights: Sequence[float], groups: Sequence[np.ndarray], method: str
) -> Interval | None:
    """The t-interval of ``sum_i w_i * mean(group_i)`` for independent groups (e.g. one
    experiment's per-seed accuracies each): standard error ``sqrt(sum w_i^2 s_i^2 / n_i)``,
    degrees of freedom by Welch-Satterthwaite. None when a group with a non-zero weight has
    fewer than two values. Exact for normal data where a bootstrap of three seeds is not: a
    percentile bootstrap of n = 3 sees only ten distinct resampled means and its interval is
    too narrow."""
    from scipy import stats

    w = np.asarray(weights, dtype=float)
    samples = [np.asarray(g, dtype=float) for g in groups]
    used = [(wi, s) for wi, s in zip(w, samples, strict=True) if wi != 0]
    if not used or min(len(s) for _, s in used) < 2:
        return None
    estimate = float(sum(wi * s.mean() for wi, s in used))
    terms = [wi**2 * s.var(ddof=1) / len(s) for wi, s in used]
    var = float(sum(terms))
    n = min(len(s) for _, s in used)
    if var == 0:
        return Interval(estimate, estimate, estimate, estimate, estimate, method, n)
    df = var**2 / sum(t**2 / (len(s) - 1) for t, (_, s) in zip(terms, used, strict=True))
    half95 = float(stats.t.ppf(0.975, df)) * math.sqrt(var)
    half90 = float(stats.t.ppf(0.95, df)) * math.sqrt(var)
    return Interval(
        estimate,
        estimate - half95,
        estimate + half95,
        estimate - half90,
        estimate + half90,
        method,
        n,
    )


def linear_seeds_needed(
    weights: Sequence[float], groups: Sequence[np.ndarray], margin: float, limit: int = 1000
) -> int | None:
    """Seeds per point that :func:`linear_interval` would need, at the observed means and
    spreads, for a clear verdict under :func:`verdict`; None if none up to ``limit`` would or
    a spread is unknown."""
    from scipy import stats

    w = np.asarray(weights, dtype=float)
    used = [(wi, np.asarray(g, dtype=float)) for wi, g in zip(w, groups, strict=True) if wi != 0]
    if not used or min(len(s) for _, s in used) < 2:
        return None
    mean = abs(float(sum(wi * s.mean() for wi, s in used)))
    unit_var = float(sum(wi**2 * s.var(ddof=1) for wi, s in used))  # times 1/n
    if unit_var == 0:
        return min(len(s) for _, s in used)
    for n in range(2, limit + 1):
        se = math.sqrt(unit_var / n)
        df = n - 1  # the smallest Welch-Satterthwaite df with n per group: conservative
        if mean < margin and stats.t.ppf(0.95, df) * se < margin - mean:
            return n
        if stats.t.ppf(0.975, df) * se < mean:
            return n
    return None


def _sorted(flops: Sequence[float], acc: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(np.asarray(flops, float), kind="stable")
    return np.asarray(flops, float)[order], np.asarray(acc, float)[order]
