"""SRCC, PLCC, KRCC (tau-b) and the Wilcoxon signed-rank p in numpy, equal to scipy.stats' (tests compare them).

Why not scipy.stats: importing it takes about 0.9 s on 2 cores (scipy 1.17 rewrites hundreds of docstrings at
import), more than a whole ridge or floor fit, and `featcache fit` should start faster than `import torch`
(issue 10). These are the textbook definitions with scipy's conventions: average ranks for ties, tau-b, and
scipy's choice between the exact, the sign-flip and the normal Wilcoxon p.
"""

from __future__ import annotations

import math

import numpy as np

EXACT_WILCOXON_MAX = 50  # scipy: exact null distribution up to 50 differences when there are no ties or zeros
PERMUTATION_WILCOXON_MAX = 13  # scipy: with ties or zeros, all 2^n sign flips up to 13 differences
TIE_DECIMALS = 12  # differences of correlations equal to this many decimals are ties (and below it, zeros)


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks (scipy.stats.rankdata's default)."""
    a = np.asarray(values, dtype=np.float64).ravel()
    n = len(a)
    order = np.argsort(a, kind="mergesort")
    first = np.r_[True, a[order][1:] != a[order][:-1]]
    dense = np.empty(n, dtype=np.intp)
    dense[order] = np.cumsum(first)
    bounds = np.r_[np.flatnonzero(first), n]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def pearson(x, y) -> float:
    """Pearson's r (NaN when either side is constant), as scipy: centred values scaled by their largest magnitude
    (no overflow at 1e170), exactly +-1 for two points, clipped to [-1, 1] against rounding."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    if len(x) == 2:
        return float(np.sign(x[1] - x[0]) * np.sign(y[1] - y[0]))
    xm, ym = x - x.mean(), y - y.mean()
    xm, ym = xm / np.max(np.abs(xm)), ym / np.max(np.abs(ym))
    nx, ny = np.linalg.norm(xm), np.linalg.norm(ym)
    return float(np.clip(np.dot(xm / nx, ym / ny), -1.0, 1.0))


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's r of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def _pairs_within(counts: np.ndarray) -> int:
    """Pairs inside groups of these sizes (tied pairs, given how many share each value)."""
    return int(np.sum(counts * (counts - 1) // 2))


def _run_lengths(new_run: np.ndarray) -> np.ndarray:
    """Lengths of the runs of a sorted sequence, from `new_run[i]`: element i + 1 differs from element i."""
    return np.diff(np.flatnonzero(np.r_[True, new_run, True]))


def _inversions(a: np.ndarray) -> int:
    """Pairs i < j with a[i] > a[j], for non-negative integers: a bottom-up merge sort, each level vectorised
    over all its block pairs (O(n log^2 n) in numpy, no Python loop over elements)."""
    n = len(a)
    s = np.asarray(a, dtype=np.int64)
    span = int(s.max()) + 1 if n else 1
    position = np.arange(n)
    total, width = 0, 1
    while width < n:
        block = position // width
        pair = block // 2
        left = block % 2 == 0
        key = pair * span + s  # pairs ascending, values sorted inside each block: left keys sorted overall
        left_keys, right_keys, right_pair = key[left], key[~left], pair[~left]
        start = np.searchsorted(left_keys, right_pair * span, side="left")
        end = np.searchsorted(left_keys, (right_pair + 1) * span, side="left")
        not_greater = np.searchsorted(left_keys, right_keys, side="right") - start
        total += int(np.sum(end - start - not_greater))
        s = np.sort(key) - (position // (2 * width)) * span
        width *= 2
    return total


def kendall_tau_b(x, y) -> float:
    """Kendall's tau-b (scipy.stats.kendalltau's default): (concordant - discordant) / sqrt of the untied pairs
    on each side; NaN when either side is constant."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    n = len(x)
    if n < 2:
        return float("nan")
    order = np.lexsort((y, x))  # by x, ties in x by y: a discordant pair is then exactly an inversion of y
    xs, ys = x[order], y[order]
    _, y_rank, y_counts = np.unique(ys, return_inverse=True, return_counts=True)
    discordant = _inversions(y_rank.ravel())
    total = n * (n - 1) // 2
    new_x = xs[1:] != xs[:-1]
    x_ties = _pairs_within(_run_lengths(new_x))
    y_ties = _pairs_within(y_counts)
    both_ties = _pairs_within(_run_lengths(new_x | (ys[1:] != ys[:-1])))
    if total == x_ties or total == y_ties:
        return float("nan")
    con_minus_dis = total - x_ties - y_ties + both_ties - 2 * discordant
    tau = con_minus_dis / math.sqrt(total - x_ties) / math.sqrt(total - y_ties)
    return float(min(1.0, max(-1.0, tau)))


def _signed_rank_null(doubled_ranks: np.ndarray) -> np.ndarray:
    """Probability of each value of 2 x R+ under random signs: subset sums of the doubled ranks, by counting."""
    counts = np.zeros(int(doubled_ranks.sum()) + 1)
    counts[0] = 1.0
    for r in doubled_ranks.astype(np.int64):
        shifted = np.zeros_like(counts)
        shifted[r:] = counts[:len(counts) - r]
        counts = counts + shifted
    return counts / counts.sum()


def wilcoxon_p(differences) -> float:
    """Two-sided p of the Wilcoxon signed-rank test on paired differences, zeros dropped from the ranks, as
    scipy.stats.wilcoxon(d) (method 'auto'): the exact null without ties or zeros up to 50 differences, all sign
    flips with ties or zeros up to 13, else the normal approximation with the tie correction (and, as scipy's
    default, no continuity correction).
    NaN when every difference is 0.

    The differences are first rounded to TIE_DECIMALS: two folds' SRCC differences that are equal but for the last
    bit (the same ranks summed in another order) would otherwise switch between the exact and the sign-flip
    null and move p (0.84 to 0.80 on 10 folds in one run). A pair straddling a rounding midpoint still splits,
    which is rare (about 1 in 1e5 per value)."""
    d = np.round(np.asarray(differences, dtype=np.float64).ravel(), TIE_DECIMALS)
    nonzero = d[d != 0]
    m = len(nonzero)
    if m == 0:
        return float("nan")
    ranks = average_ranks(np.abs(nonzero))
    r_plus = float(ranks[nonzero > 0].sum())
    tie_sizes = np.unique(np.abs(nonzero), return_counts=True)[1].astype(np.float64)
    has_ties = len(tie_sizes) < m
    has_zeros = m < len(d)
    exact = (len(d) <= EXACT_WILCOXON_MAX and not (has_ties or has_zeros)) or len(d) <= PERMUTATION_WILCOXON_MAX
    if exact:
        null = _signed_rank_null(np.rint(2 * ranks))  # average ranks are multiples of 1/2
        k = int(round(2 * r_plus))
        return float(min(1.0, 2 * min(null[k:].sum(), null[:k + 1].sum())))
    mean = m * (m + 1) / 4.0
    se = math.sqrt((m * (m + 1) * (2 * m + 1) - np.sum(tie_sizes ** 3 - tie_sizes) / 2) / 24)
    return float(math.erfc(abs(r_plus - mean) / se / math.sqrt(2)))
