"""The numbers IQA papers report, computed the same way everywhere, with failed folds made explicit.

Correlations come from scipy.stats (`spearmanr`, `pearsonr`, `kendalltau` tau-b). A fold *fails* when its
predictions are (numerically) constant: range below FAILED_RANGE x the SD of the training labels. Its correlations
are undefined; summaries count them as 0, never drop them (a dropped fold lets a configuration that mostly fails
look best). The paired test between modes is in regressors.inference.
"""

from __future__ import annotations


import numpy as np
from scipy import optimize, stats

FAILED_RANGE = 1e-6
CORRELATIONS = ("srcc", "plcc", "plcc_logistic", "krcc")
LOGISTIC_WIDTHS = (0.1, 100.0)  # the logistic's width |b4|, in SDs of the predictions it maps: no step, no line


def prediction_failed(y_pred: np.ndarray, train_sd: float) -> bool:
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if len(y_pred) < 2 or not np.isfinite(y_pred).all():
        return True
    return float(np.ptp(y_pred)) < FAILED_RANGE * max(float(train_sd), 1e-300)


def logistic4(x, b1, b2, b3, b4):
    """The VQEG 4-parameter logistic: maps predictions onto the MOS scale before PLCC. exp overflowing to inf far
    below the midpoint is the right limit (b2), not something to warn about."""
    with np.errstate(over="ignore"):
        return (b1 - b2) / (1.0 + np.exp(-(x - b3) / np.abs(b4))) + b2


def fit_logistic(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray | None:
    """Parameters of logistic4 mapping predictions onto MOS by least squares, or None when no increasing curve fits
    better than a constant.

    Constrained as VQEG requires, increasing (b1 >= b2): left free, the fit turns anti-correlated predictions into a
    positive PLCC through a decreasing curve. Its width |b4| is kept between LOGISTIC_WIDTHS x the predictions' SD:
    narrower, the curve becomes a step between two neighbouring predictions, whose place jumps with their last bits
    and which scores label noise on the samples it was fitted on; wider, it is a straight line, which the plain
    PLCC already measures, and the solver would walk towards an infinite width. For a given midpoint and width the
    best b1, b2 are a linear fit, so a grid over the two (widths log-spaced, midpoints at quantiles) finds the
    start, and a bounded least-squares refinement the optimum: the same predictions up to their last bits give the
    same curve."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if len(y_true) < 4 or not np.isfinite(y_pred).all() or np.ptp(y_pred) == 0 or np.ptp(y_true) == 0:
        return None
    centre, spread = float(np.mean(y_pred)), float(np.std(y_pred))
    level, scale = float(np.mean(y_true)), float(np.std(y_true))  # both sides standardised: the solver's absolute
    if not (spread > 0 and scale > 0):                             # tolerances then mean the same at any scale
        return None  # a spread that underflows (predictions of about 1e-300): no curve to fit
    z = (y_pred - centre) / spread
    y = (y_true - level) / scale
    narrowest, widest = LOGISTIC_WIDTHS
    best = (0.0, 0.0, 1.0)  # (explained sum of squares, midpoint, width), in SD units
    middles = np.quantile(z, np.linspace(0.02, 0.98, 49))
    for width in np.geomspace(narrowest, widest, 31):
        with np.errstate(over="ignore"):
            s = 1.0 / (1.0 + np.exp(-(z[:, None] - middles[None, :]) / width))
        s -= s.mean(axis=0)
        cov, var = y @ s, np.einsum("ij,ij->j", s, s)
        gain = np.where((cov > 0) & (var > 0), cov ** 2 / np.where(var > 0, var, 1.0), 0.0)
        k = int(np.argmax(gain))
        if gain[k] > best[0]:
            best = (float(gain[k]), float(middles[k]), float(width))
    if best[0] <= 0:
        return None  # no increasing curve explains any of the labels' variance
    _, middle, width = best

    def curve(q):
        with np.errstate(over="ignore"):
            return q[0] + q[1] / (1.0 + np.exp(-(z - q[2]) / q[3]))

    def jacobian(q):
        with np.errstate(over="ignore"):
            s = 1.0 / (1.0 + np.exp(-(z - q[2]) / q[3]))
        slope = q[1] * s * (1.0 - s) / q[3]
        return np.stack([np.ones_like(z), s, -slope, -slope * (z - q[2]) / q[3]], axis=1)

    with np.errstate(over="ignore"):
        s = 1.0 / (1.0 + np.exp(-(z - middle) / width))
    rise = float((y @ (s - s.mean())) / ((s - s.mean()) @ (s - s.mean())))
    start = [float(-rise * s.mean()), rise, middle, width]
    try:
        fitted = optimize.least_squares(lambda q: curve(q) - y, start, jac=jacobian,
                                        bounds=([-np.inf, 0.0, float(z.min()), narrowest],
                                                [np.inf, 1e3, float(z.max()), widest]),
                                        ftol=1e-12, xtol=1e-12, gtol=1e-12, max_nfev=500)
    except (ValueError, np.linalg.LinAlgError):
        return None
    low, rise, middle, width = (fitted.x if fitted.cost <= 0.5 * float(np.sum((curve(start) - y) ** 2))
                                else start)
    if not rise > 1e-9:
        return None
    return np.array([level + (low + rise) * scale, level + low * scale, centre + middle * spread, width * spread])


def pearson(x, y) -> float:
    """Pearson's r by scipy.stats.pearsonr; NaN (no warning) when fewer than 2 values or either side is constant."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.pearsonr(x, y).statistic)


def spearman(x, y) -> float:
    """Spearman's rho by scipy.stats.spearmanr (average ranks for ties); NaN (no warning) when fewer than 2 values
    or either side is constant."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def kendall(x, y) -> float:
    """Kendall's tau-b by scipy.stats.kendalltau; NaN (no warning) when fewer than 2 values or either side is
    constant."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.kendalltau(x, y).statistic)


NEARLY_CONSTANT = np.finfo(np.float64).eps ** 0.75  # scipy.stats.pearsonr warns of a spread below this times the mean
FIT_HERE = "fit here"  # plcc_after_logistic: fit the mapping on the samples it scores


def plcc_after_logistic(y_true: np.ndarray, y_pred: np.ndarray, params=FIT_HERE) -> float:
    """PLCC after mapping predictions through logistic4 with `params` (fitted on these samples by default); plain
    PLCC when there is no mapping (the fit did not converge or found no increasing relation).

    A fold whose predictions sit on a flat end of a curve fitted elsewhere (cv: on the fold's training predictions)
    maps to values that differ only in their last bits; those values are centred before scipy scores them (r is
    the same but for rounding), so scipy's near-constant warning, which would otherwise reach the command line
    once per such fold, does not arise and no warning filter is changed (another thread may be running). Other
    folds are scored as they are."""
    plain = pearson(y_true, y_pred)
    if isinstance(params, str):
        params = fit_logistic(y_true, y_pred)
    if params is None:
        return plain
    with np.errstate(over="ignore"):
        mapped = logistic4(np.asarray(y_pred, dtype=np.float64), *params)
    if not np.isfinite(mapped).all() or np.ptp(mapped) == 0:
        return plain
    centre = float(mapped.mean())
    if np.linalg.norm(mapped - centre) < NEARLY_CONSTANT * abs(centre):  # scipy would warn: spread vs mean
        mapped = mapped - centre  # r does not move; the spread is then far above the mean, so scipy does not warn
    return pearson(y_true, mapped)


def quality_metrics(y_true, y_pred, train_sd: float | None = None, logistic=FIT_HERE) -> dict:
    """SRCC, PLCC (plain and after the logistic), KRCC, RMSE and `failed`. Correlations of a failed fold are NaN
    here (the raw truth); summaries count them as 0. `logistic`: the mapping's parameters when it was fitted on
    other samples than these (cv: the fold's training predictions against the training labels), None for none;
    by default it is fitted on these very samples (an optimistic PLCC, for a look at one set only)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    sd = float(np.std(y_true)) if train_sd is None else train_sd
    with np.errstate(over="ignore", invalid="ignore"):
        rmse = float(np.sqrt(np.mean((y_true - y_pred) ** 2)))
    failed = prediction_failed(y_pred, sd) or len(y_true) < 2 or np.ptp(y_true) == 0
    out = {"srcc": float("nan"), "plcc": float("nan"), "plcc_logistic": float("nan"), "krcc": float("nan"),
           "rmse": rmse, "failed": bool(failed)}
    if failed:
        return out
    out.update(srcc=spearman(y_true, y_pred), plcc=pearson(y_true, y_pred),
               plcc_logistic=plcc_after_logistic(y_true, y_pred, logistic), krcc=kendall(y_true, y_pred))
    return out


def srcc_counted(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """SRCC of one fold as the summaries count it: 0 when the predictions (or the labels) are constant."""
    if prediction_failed(y_pred, float(np.std(y_true))) or np.ptp(y_true) == 0:
        return 0.0
    return spearman(y_true, y_pred)


def counted(value: float, failed: bool) -> float:
    """A failed fold's correlation counts as 0 in every mean."""
    return 0.0 if failed or not np.isfinite(value) else float(value)


def pooled_correlations(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """SRCC and PLCC of all out-of-fold predictions together (0 when they are constant)."""
    if len(y_true) < 3 or np.ptp(y_pred) == 0 or np.ptp(y_true) == 0 or not np.isfinite(y_pred).all():
        return {"srcc": 0.0, "plcc": 0.0}
    return {"srcc": spearman(y_true, y_pred), "plcc": pearson(y_true, y_pred)}
