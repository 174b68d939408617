#!/usr/bin/env python
"""Canary judge calibration and power: the mixture SPRT against judges read the same way.

A rollout controller reads the canary judge over and over while labels arrive. This script
simulates many rollouts, reads every judge after every 50 labels per arm up to --max-labels,
and reports how often each one fails a canary that is as good as the control (the false-fail
rate) and, for a canary with a higher MSE, how often and how soon it fails it:

    python bench/canary_power.py                        # 500 rollouts, 20,000 labels (~2-4 minutes)
    python bench/canary_power.py --rollouts 100         # a quick run
    python bench/canary_power.py --effect 1.25 --dfs 3  # another effect, one tail

Data (NumPy, seeded; per rollout, per labeled request i):
  level     mu_i ~ lognormal(3.5, 0.6): the target's level
  label     y_i = mu_i + s_i * sqrt(0.5) * eps_i                      (lognormal targets)
  model m   yhat_m,i = mu_i + s_i * sigma_m * e_m,i
  residual  r_m,i = yhat_m,i - y_i = s_i * (sigma_m * e_m,i - sqrt(0.5) * eps_i)
where eps and e are Student-t with --dfs degrees of freedom (3 and 5), scaled to unit variance
(with 3 degrees of freedom r² has no finite variance), and s_i = 1: the residuals do not depend
on the target. With --level-sigma S > 0 they do: s_i = (mu_i / e^3.5)^(S / 0.6), a lognormal
of sigma S (S = 0.6: errors proportional to the target), which makes r² a scale mixture and
heavier-tailed still. Only the residuals enter the judges: y itself is never formed.
The control has sigma_b² = 0.5, so half of its MSE is label noise. "Identical models": the
canary's errors have the control's distribution (sigma_c = sigma_b; independent draws, not the
same predictions). "+10% MSE" (--effect 1.1): the canary's own model error grows, sigma_c² =
sigma_b² + 0.1 * (sigma_b² + 0.5), so its residual variance, and MSE, is exactly 1.1x the
control's; the label noise is unchanged. Both scenarios use the same draws (common random
numbers), and every judge sees the same data.

Two modes:
  split   traffic is split: the canary and the control each get their own requests (own mu,
          eps, e), and a read comes after every 50 labels *per arm* (100 labels in all)
  shadow  both versions score the same requests, so r_c and r_b share mu and eps (the label
          noise); a read comes after every 50 labeled requests, and the mixture SPRT gets the
          moments of d_i = r_c,i² - r_b,i² (`judge(..., paired=...)`)

Judges, each read after every 50 labels from `min_n` = 200 per arm on (the same floor for all),
a rollout stopping at its first verdict:
  mSPRT        msewatch.monitor.sequential.judge (alpha 0.05, tau_rel 0.1, margin 0.05): fail,
               pass or continue. Its decision is computed for all reads at once with NumPy from
               cumulative sums (n, sum r², sum r⁴; in shadow mode sum d, sum d²), and checked
               against `judge` itself: at every read of the first --check rollouts of each chunk,
               and at every rollout's first verdict and the read before it. Any disagreement
               exits 1. "fail ever" also reads on after a pass, up to --max-labels: the event that
               Ville's inequality bounds by alpha.
  naive        a one-sided Welch z-test of MSE_canary > MSE_control at alpha = 0.05 (split:
               (mean_c - mean_b) / sqrt(s_c²/n + s_b²/n); shadow: the paired z on d), the test one
               would run once at a fixed n, read every 50 labels. (From n = 200 on, the Welch t
               quantile is within 0.5% of the normal one.)
  Mann-Whitney a Kayenta-style judge: the two-sample Mann-Whitney U test on the squared errors,
               one-sided (canary larger), normal approximation, alpha = 0.05, no correction for
               the repeated reads; in shadow mode too it treats the two samples as independent, as
               Kayenta does. U is kept up to date with Fenwick trees over the pooled ranks, so a
               read costs O(50 log n). Kayenta's NetflixACAJudge classifies "High" only when the
               lower end of the 95% interval of the Hodges-Lehmann shift exceeds 0.25x the
               estimate; that effect-size threshold is left out here (it would lower both its
               false fails and its power).

Per judge and mode it prints, for identical models: the false-fail rate with a Wilson 95%
interval, the pass rate and the median labels to a pass (mSPRT; the others never pass before
the end), and for the canary with the higher MSE: the power (a fail verdict within
--max-labels), the wrong-pass rate (mSPRT) and the median labels per arm to the fail verdict
(rollouts without one count as infinite, so "> max" means power below 50%). Figures are for
people to read: only a disagreement with `judge` changes the exit status.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from msewatch.monitor.sequential import SampleMoments, judge

ALPHA = 0.05
TAU_REL = 0.1
MARGIN = 0.05
MIN_N = 200
BATCH = 50  # labels per arm between two reads
Z_ALPHA = 1.6448536269514722  # the normal's 95% point: one-sided alpha = 0.05
LOG_MU, SIGMA_LOG = 3.5, 0.6  # lognormal level of the targets
LEVEL_SIGMA = 0.0  # default --level-sigma: residuals independent of the target
LABEL_NOISE_VAR = 0.5  # sqrt(0.5) * unit-variance t: the label noise
CONTROL_ERROR_VAR = 0.5  # the control model's own error variance
JUDGES = ("msprt", "naive", "mwu")
JUDGE_NAMES = {"msprt": "mSPRT", "naive": "naive z", "mwu": "Mann-Whitney"}
MODES = ("split", "shadow")
CONTINUE, FAIL, PASS = 0, 1, 2


# -- data ----------------------------------------------------------------------------------------
def canary_error_var(ratio: float) -> float:
    """sigma_c² giving a canary MSE of `ratio` x the control's (the label noise is shared)."""
    return CONTROL_ERROR_VAR + (ratio - 1.0) * (CONTROL_ERROR_VAR + LABEL_NOISE_VAR)


def _unit_t(rng: np.random.Generator, df: float, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_t(df, shape) * math.sqrt((df - 2.0) / df)


def draw(rng: np.random.Generator, df: float, mode: str, rollouts: int, n: int,
         level_sigma: float = LEVEL_SIGMA) -> dict[str, np.ndarray]:
    """The random parts of `rollouts` rollouts of `n` labeled requests per arm.

    scale_c, scale_b: s_i (one array shared by both arms in shadow mode); noise_c, noise_b:
    sqrt(0.5) * eps_i (shared in shadow mode); err_c, err_b: the models' unit errors e_m,i.
    """
    shape = (rollouts, n)

    def scale() -> np.ndarray:
        if level_sigma == 0:
            return np.ones(shape)
        return np.exp(rng.normal(0.0, level_sigma, shape))  # (mu / e^LOG_MU) ** (level_sigma / SIGMA_LOG)

    out: dict[str, np.ndarray] = {}
    out["scale_b"] = scale()
    out["noise_b"] = math.sqrt(LABEL_NOISE_VAR) * _unit_t(rng, df, shape)
    if mode == "split":
        out["scale_c"] = scale()
        out["noise_c"] = math.sqrt(LABEL_NOISE_VAR) * _unit_t(rng, df, shape)
    else:
        out["scale_c"], out["noise_c"] = out["scale_b"], out["noise_b"]
    out["err_b"] = _unit_t(rng, df, shape)
    out["err_c"] = _unit_t(rng, df, shape)
    return out


def squared_errors(d: dict[str, np.ndarray], ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """r_c² and r_b² for a canary whose MSE is `ratio` x the control's."""
    r_c = d["scale_c"] * (math.sqrt(canary_error_var(ratio)) * d["err_c"] - d["noise_c"])
    r_b = d["scale_b"] * (math.sqrt(CONTROL_ERROR_VAR) * d["err_b"] - d["noise_b"])
    return r_c * r_c, r_b * r_b


def levels(rng: np.random.Generator, n: int, df: float, level_sigma: float) -> np.ndarray:
    """n targets y as the model above makes them: printed for the record, the judges see residuals only."""
    mu = np.exp(LOG_MU + rng.normal(0.0, SIGMA_LOG, n))
    s = (mu / math.exp(LOG_MU)) ** (level_sigma / SIGMA_LOG)
    return mu + s * math.sqrt(LABEL_NOISE_VAR) * _unit_t(rng, df, (n,))


# -- moments at every read -----------------------------------------------------------------------
@dataclass(frozen=True)
class Cumulative:
    """n, mean and m2 = sum (v - mean)² of a sample's prefix at every read: shape (rollouts, reads)."""

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, batch: int) -> Cumulative:
        r, total = values.shape
        k = total // batch
        blocks = values[:, : k * batch].reshape(r, k, batch)
        s1 = np.cumsum(blocks.sum(axis=2), axis=1)
        s2 = np.cumsum((blocks * blocks).sum(axis=2), axis=1)
        n = np.broadcast_to(batch * np.arange(1, k + 1, dtype=float), (r, k))
        mean = s1 / n
        m2 = np.maximum(s2 - s1 * mean, 0.0)  # sum v² - n mean²; ≥ 0 up to rounding
        return cls(n, mean, m2)

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / (self.n - 1)

    def at(self, i: int, k: int) -> SampleMoments:
        return SampleMoments(int(self.n[i, k]), float(self.mean[i, k]), float(self.m2[i, k]))


# -- judges --------------------------------------------------------------------------------------
def _delta_variance(c: Cumulative, b: Cumulative, d: Cumulative | None) -> tuple[np.ndarray, np.ndarray]:
    if d is not None:
        return d.mean, d.variance / d.n
    return c.mean - b.mean, c.variance / c.n + b.variance / b.n


def msprt_codes(c: Cumulative, b: Cumulative, d: Cumulative | None, *, alpha: float = ALPHA,
                tau_rel: float = TAU_REL, margin: float = MARGIN, min_n: int = MIN_N) -> np.ndarray:
    """`judge`'s verdict at every read, as CONTINUE / FAIL / PASS codes (the same arithmetic)."""
    delta, var = _delta_variance(c, b, d)
    mse_b = b.mean
    tau = tau_rel * mse_b
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_l = 0.5 * np.log(var / (var + t2)) + delta * delta * t2 / (2 * var * (var + t2))
        lr = np.exp(np.minimum(log_l, 700.0))
        lr = np.where((var <= 0) | (tau <= 0), np.where(delta != 0, np.inf, 1.0), lr)
        p = np.minimum(1.0, 1.0 / lr)
        h = np.sqrt(2 * var * (var + t2) / t2 * (math.log(1 / alpha) + 0.5 * np.log((var + t2) / var)))
        h = np.where(var <= 0, 0.0, h)
        upper = (delta + h) / mse_b + 1.0
    ok = (c.n >= min_n) & (b.n >= min_n) & (mse_b != 0)
    if d is not None:
        ok = (d.n >= min_n) & (mse_b != 0)
    fail = ok & (p <= alpha) & (delta > 0)
    passed = ok & ~fail & (upper < 1.0 + margin)
    return np.where(fail, FAIL, np.where(passed, PASS, CONTINUE)).astype(np.int8)


def naive_rejects(c: Cumulative, b: Cumulative, d: Cumulative | None, *, min_n: int = MIN_N) -> np.ndarray:
    """One-sided Welch (split) or paired (shadow) z-test of MSE_c > MSE_b at alpha = 0.05, per read."""
    delta, var = _delta_variance(c, b, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = delta / np.sqrt(var)
    return (c.n >= min_n) & (z > Z_ALPHA)


class _Fenwick:
    """Fenwick trees over ranks 0..size-1, one per row, counting the ranks inserted so far.

    Stored position-major (slot p of every row side by side), which keeps the upper levels of
    the trees, read by every query, in a few cache lines.
    """

    def __init__(self, rows: int, size: int) -> None:
        self.size = size
        self.rows = rows
        self.tree = np.zeros((size + 1) * rows, dtype=np.int32)
        self.row = np.arange(rows, dtype=np.int64)[:, None]
        self.steps = size.bit_length() + 1

    def insert(self, ranks: np.ndarray) -> None:
        p = ranks.astype(np.int64) + 1
        for _ in range(self.steps):
            keep = p <= self.size
            if not keep.any():
                break
            idx = (p * self.rows + self.row)[keep]
            np.add.at(self.tree, idx, np.ones(idx.size, dtype=self.tree.dtype))  # a typed operand: the fast path
            p = p + (p & -p)

    def count_below(self, ranks: np.ndarray) -> np.ndarray:
        """Per element: how many inserted ranks (same row) are below its rank."""
        q = ranks.astype(np.int64)
        s = np.zeros(q.shape, dtype=np.int64)
        for _ in range(self.steps):
            if not q.any():
                break
            s += self.tree[q * self.rows + self.row]  # q = 0 reads the unused slot 0, always 0
            q = q - (q & -q)
        return s


def mann_whitney_u(x: np.ndarray, y: np.ndarray, batch: int) -> np.ndarray:
    """U = #{(i, j): x_i > y_j} over the first n = batch, 2 batch, ... of each row: (rows, reads).

    Continuous data: no ties (a tie would count as x < y).
    """
    rows, total = x.shape
    k_reads = total // batch
    x, y = x[:, : k_reads * batch], y[:, : k_reads * batch]
    n_all = k_reads * batch
    pooled = np.concatenate([x, y], axis=1)
    order = np.argsort(pooled, axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(2 * n_all), order.shape), axis=1)
    rx, ry = ranks[:, :n_all], ranks[:, n_all:]
    tx, ty = _Fenwick(rows, 2 * n_all), _Fenwick(rows, 2 * n_all)
    u = np.zeros(rows, dtype=np.int64)
    out = np.empty((rows, k_reads), dtype=np.int64)
    for k in range(k_reads):
        xb, yb = rx[:, k * batch : (k + 1) * batch], ry[:, k * batch : (k + 1) * batch]
        ty.insert(yb)
        u += ty.count_below(xb).sum(axis=1)  # new x against every y so far
        u += (k * batch - tx.count_below(yb)).sum(axis=1)  # earlier x against the new y
        tx.insert(xb)
        out[:, k] = u
    return out


def mwu_rejects(u: np.ndarray, batch: int, *, min_n: int = MIN_N) -> np.ndarray:
    n = batch * np.arange(1, u.shape[1] + 1, dtype=float)
    z = (u - n * n / 2) / np.sqrt(n * n * (2 * n + 1) / 12)
    return (n >= min_n) & (z > Z_ALPHA)


def _u_direct(x: np.ndarray, y: np.ndarray) -> int:
    pooled = np.concatenate([x, y])
    ranks = np.empty(len(pooled))
    ranks[np.argsort(pooled)] = np.arange(1, len(pooled) + 1)
    return int(round(ranks[: len(x)].sum() - len(x) * (len(x) + 1) / 2))


# -- simulation ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    """Per rollout, the read index (0-based; `reads` = none within the horizon) of its verdicts."""

    fail: np.ndarray  # the first verdict is a fail, at this read
    passed: np.ndarray  # the first verdict is a pass, at this read (mSPRT only)
    fail_ever: np.ndarray  # the first fail, reading on after a pass
    reads: int
    batch: int

    @property
    def rollouts(self) -> int:
        return len(self.fail)

    def fail_rate(self) -> float:
        return float(np.mean(self.fail < self.reads))

    def fail_ever_rate(self) -> float:
        return float(np.mean(self.fail_ever < self.reads))

    def pass_rate(self) -> float:
        return float(np.mean(self.passed < self.reads))

    def median_labels(self, which: str, *, among: bool = False) -> float:
        """Median labels per arm to the verdict; rollouts without it count as infinite (or, with
        `among`, are left out: the median among the rollouts that reached it; nan if none did)."""
        idx = getattr(self, which)
        if among:
            idx = idx[idx < self.reads]
            return float(np.median((idx + 1.0) * self.batch)) if idx.size else math.nan
        labels = np.where(idx < self.reads, (idx + 1.0) * self.batch, np.inf)
        return float(np.median(labels))


def _first(mask: np.ndarray) -> np.ndarray:
    return np.where(mask.any(axis=1), mask.argmax(axis=1), mask.shape[1])


@dataclass
class Check:
    calls: int = 0
    mismatches: int = 0
    examples: list[str] | None = None
    u_checked: int = 0
    u_mismatches: int = 0
    max_rel_moment_err: float = 0.0

    def note(self, text: str) -> None:
        self.mismatches += 1
        if self.examples is None:
            self.examples = []
        if len(self.examples) < 10:
            self.examples.append(text)


_CODE = {"continue": CONTINUE, "fail": FAIL, "pass": PASS}


def _check_msprt(codes: np.ndarray, c: Cumulative, b: Cumulative, d: Cumulative | None, rows: Sequence[int],
                 first_verdict: np.ndarray, check: Check, label: str) -> None:
    """Compare the vectorised verdicts with `judge` itself: every read of `rows`, and each
    rollout's first verdict and the read before it."""
    reads = codes.shape[1]
    points = [(i, k) for i in rows for k in range(reads)]
    for i, k in enumerate(first_verdict):
        if k < reads:
            points.append((i, int(k)))
        if 0 < k <= reads:
            points.append((i, int(k) - 1))
    for i, k in points:
        got = judge(c.at(i, k), b.at(i, k), paired=d.at(i, k) if d is not None else None,
                    alpha=ALPHA, tau_rel=TAU_REL, margin=MARGIN, min_n=MIN_N)
        check.calls += 1
        if _CODE[got.verdict] != codes[i, k]:
            check.note(f"{label} rollout {i} read {k}: judge says {got.verdict}, vectorised {codes[i, k]}")


def simulate(df: float, mode: str, ratios: Sequence[float], *, rollouts: int, max_labels: int, seed: int,
             judges: Sequence[str] = JUDGES, chunk: int = 100, check_rows: int = 5,
             check: Check | None = None, batch: int = BATCH,
             level_sigma: float = LEVEL_SIGMA) -> dict[tuple[float, str], Outcome]:
    """Outcomes per (ratio, judge) of `rollouts` rollouts; the same draws for every ratio and judge."""
    check = check if check is not None else Check()
    reads = max_labels // batch
    n = reads * batch
    parts: dict[tuple[float, str], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
        (r, j): [] for r in ratios for j in judges
    }
    none = None
    for start in range(0, rollouts, chunk):
        rows = min(chunk, rollouts - start)
        rng = np.random.default_rng([seed, int(df * 1000), MODES.index(mode), start])
        draws = draw(rng, df, mode, rows, n, level_sigma)
        none = np.full(rows, reads)
        for ratio in ratios:
            x, y = squared_errors(draws, ratio)
            c, b = Cumulative.of(x, batch), Cumulative.of(y, batch)
            d = Cumulative.of(x - y, batch) if mode == "shadow" else None
            if start == 0:  # the cumulative-sum moments against a direct computation
                for k in (MIN_N // batch - 1, reads // 2, reads - 1):
                    m = (k + 1) * batch
                    for cum, v in ((c, x[0, :m]), (b, y[0, :m])) + (((d, x[0, :m] - y[0, :m]),) if d is not None else ()):
                        mean, m2 = v.mean(), ((v - v.mean()) ** 2).sum()
                        err = max(abs(cum.mean[0, k] - mean) / abs(mean), abs(cum.m2[0, k] - m2) / m2)
                        check.max_rel_moment_err = max(check.max_rel_moment_err, float(err))
            for j in judges:
                if j == "msprt":
                    codes = msprt_codes(c, b, d)
                    first_fail, first_pass = _first(codes == FAIL), _first(codes == PASS)
                    fail = np.where(first_fail < first_pass, first_fail, reads)
                    passed = np.where(first_pass < first_fail, first_pass, reads)
                    _check_msprt(codes, c, b, d, range(min(check_rows, rows)), np.minimum(first_fail, first_pass),
                                 check, f"df {df:g} {mode} ratio {ratio:g} chunk {start}")
                    parts[(ratio, j)].append((fail, passed, first_fail))
                elif j == "naive":
                    fail = _first(naive_rejects(c, b, d))
                    parts[(ratio, j)].append((fail, none, fail))
                elif j == "mwu":
                    u = mann_whitney_u(x, y, batch)
                    for k in (MIN_N // batch - 1, reads - 1):
                        m = (k + 1) * batch
                        check.u_checked += 1
                        if _u_direct(x[0, :m], y[0, :m]) != u[0, k]:
                            check.u_mismatches += 1
                    fail = _first(mwu_rejects(u, batch))
                    parts[(ratio, j)].append((fail, none, fail))
                else:
                    raise ValueError(f"unknown judge {j!r}")
        del draws
    return {
        key: Outcome(*(np.concatenate([p[i] for p in v]) for i in range(3)), reads=reads, batch=batch)
        for key, v in parts.items()
    }


# -- report --------------------------------------------------------------------------------------
def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95% interval of a binomial proportion k / n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def fmt_rate(rate: float, n: int) -> str:
    lo, hi = wilson(round(rate * n), n)
    return f"{rate:6.1%} [{lo:5.1%}, {hi:5.1%}]"


def fmt_labels(v: float, max_labels: int) -> str:
    if math.isnan(v):
        return "-"
    return f"> {max_labels:,}" if math.isinf(v) else f"{v:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", type=int, default=500, help="simulated rollouts per tail and mode [500]")
    ap.add_argument("--max-labels", type=int, default=20_000, help="labels per arm before giving up [20,000]")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--effect", type=float, default=1.1, help="the worse canary's MSE / the control's [1.1]")
    ap.add_argument("--dfs", default="3,5", help="Student-t degrees of freedom of the errors [3,5]")
    ap.add_argument("--modes", default="split,shadow", help="[split,shadow]")
    ap.add_argument("--level-sigma", type=float, default=LEVEL_SIGMA,
                    help=f"errors proportional to a lognormal level of this sigma (0.6: the targets' own); "
                         f"0: errors independent of the target [{LEVEL_SIGMA:g}]")
    ap.add_argument("--chunk", type=int, default=100, help="rollouts simulated at once (~0.4 GB per 100 at 20,000 "
                    "labels) [100]")
    ap.add_argument("--check", type=int, default=5,
                    help="rollouts per chunk whose every read is also judged by `judge` itself [5]")
    args = ap.parse_args(argv)
    dfs = [float(v) for v in args.dfs.split(",") if v.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in modes) or not modes:
        ap.error(f"--modes: choose from {', '.join(MODES)}")
    if any(v <= 2 for v in dfs):
        ap.error("--dfs: each must be above 2 (finite variance of the residuals)")
    if args.max_labels < MIN_N or args.rollouts < 1 or args.effect <= 1 or args.level_sigma < 0:
        ap.error(f"--max-labels must be at least {MIN_N}, --rollouts at least 1, --effect above 1, "
                 f"--level-sigma at least 0")

    from _machine import describe  # here, so that the tests can import this file without bench/ on sys.path

    print(describe(("msewatch", "numpy")), flush=True)
    print(f"{args.rollouts} rollouts per tail and mode, reads every {BATCH} labels per arm from {MIN_N} to "
          f"{args.max_labels:,}; alpha {ALPHA}, mSPRT tau_rel {TAU_REL}, pass margin {MARGIN:.0%}; seed {args.seed}",
          flush=True)
    print(f"worse canary: MSE x {args.effect:g} (its model-error variance {CONTROL_ERROR_VAR} -> "
          f"{canary_error_var(args.effect):.3f}; label-noise variance {LABEL_NOISE_VAR}, shared in shadow mode); "
          + (f"errors scaled by a lognormal level, sigma {args.level_sigma:g}" if args.level_sigma
             else "errors independent of the target"), flush=True)
    y = levels(np.random.default_rng(args.seed), 100_000, min(dfs), args.level_sigma)
    print(f"targets y (df {min(dfs):g}): median {np.median(y):.1f}, p1 {np.quantile(y, 0.01):.1f}, "
          f"p99 {np.quantile(y, 0.99):.1f}", flush=True)
    check = Check()
    results: dict[tuple[float, str], dict[tuple[float, str], Outcome]] = {}
    t_all = time.perf_counter()
    for df in dfs:
        for mode in modes:
            t0 = time.perf_counter()
            results[(df, mode)] = simulate(df, mode, (1.0, args.effect), rollouts=args.rollouts,
                                           max_labels=args.max_labels, seed=args.seed, chunk=args.chunk,
                                           check_rows=args.check, check=check, level_sigma=args.level_sigma)
            print(f"  df {df:g} {mode:<6} simulated in {time.perf_counter() - t0:5.1f} s", flush=True)
    n = args.rollouts
    ml = args.max_labels

    print()
    print(f"identical models (equal MSE), {n} rollouts each: every fail is a false fail")
    print(f"{'df':>3} {'mode':<6} {'judge':<13} {'false-fail [95% CI]':>24} {'fail ever':>9} {'pass':>8} "
          f"{'median labels to pass':>22} {'(among passes)':>14}")
    for (df, mode), res in results.items():
        for j in JUDGES:
            o = res[(1.0, j)]
            if j == "msprt":
                ever, pass_ = f"{o.fail_ever_rate():9.1%}", f"{o.pass_rate():7.1%} "
                med = fmt_labels(o.median_labels("passed"), ml)
                among = fmt_labels(o.median_labels("passed", among=True), ml)
            else:
                ever, pass_, med, among = f"{'-':>9}", f"{1 - o.fail_rate():7.1%}*", "-", "-"
            print(f"{df:>3g} {mode:<6} {JUDGE_NAMES[j]:<13} {fmt_rate(o.fail_rate(), n):>24} {ever} {pass_} "
                  f"{med:>22} {among:>14}")
    print(f"* no pass verdict: the share that reached {ml:,} labels without a fail")

    print()
    print(f"canary MSE x {args.effect:g}, {n} rollouts each: power = a fail verdict within {ml:,} labels per arm")
    print(f"{'df':>3} {'mode':<6} {'judge':<13} {'power [95% CI]':>24} {'wrong pass':>10} "
          f"{'median labels to fail':>22} {'(among fails)':>14}")
    for (df, mode), res in results.items():
        for j in JUDGES:
            o = res[(args.effect, j)]
            wrong = f"{o.pass_rate():10.1%}" if j == "msprt" else f"{'-':>10}"
            print(f"{df:>3g} {mode:<6} {JUDGE_NAMES[j]:<13} {fmt_rate(o.fail_rate(), n):>24} {wrong} "
                  f"{fmt_labels(o.median_labels('fail'), ml):>22} "
                  f"{fmt_labels(o.median_labels('fail', among=True), ml):>14}")
    print("labels are per arm: a split read at n has used 2n labels (n per arm), a shadow read n labeled requests; "
          f"rollouts without the verdict count as infinite ('> {ml:,}' when fewer than half reach it)")

    print()
    worst = max(res[(1.0, "msprt")].fail_ever_rate() for res in results.values())
    print(f"mSPRT false fails (fail ever) at most {worst:.1%} over the configurations: "
          f"{'<= alpha' if worst <= ALPHA else 'ABOVE alpha'} ({ALPHA:.0%})")
    print(f"vectorised mSPRT against judge(): {check.calls:,} reads compared, {check.mismatches} disagree; "
          f"Mann-Whitney U against a direct rank sum: {check.u_checked} compared, {check.u_mismatches} disagree; "
          f"cumulative-sum moments within {check.max_rel_moment_err:.1e} relative of a direct computation")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    if check.mismatches or check.u_mismatches:
        for e in check.examples or []:
            print(f"  {e}", file=sys.stderr)
        print("DISAGREEMENT with judge() or the direct U: the figures above are not judge()'s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
