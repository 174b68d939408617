"""Always-valid comparison of two mean squared errors: the mixture SPRT (Johari et al. 2017).

The canary judge is read every minute by a rollout controller, so a fixed-n test read that
often fails good canaries far more often than its nominal α. The mixture sequential probability
ratio test stays valid however often it is read: with an estimate Δ̂ of Δ = MSE_canary −
MSE_control whose variance is V, and a normal mixing distribution N(0, τ²) over Δ under the
alternative,

    Λ = √(V / (V + τ²)) · exp(Δ̂² τ² / (2 V (V + τ²)))

is a nonnegative martingale under Δ = 0, so P(Λ ever reaches 1/α) ≤ α (Ville's inequality),
and p = min(1, 1/Λ) is an always-valid p-value. Inverting the same boundary gives a confidence
sequence for Δ: Δ̂ ± √(2 V (V + τ²)/τ² · (log(1/α) + ½ log((V + τ²)/V))).

Split traffic (independent samples): V = s²_c/n_c + s²_b/n_b. Shadow (both versions scored the
same requests): d_i = r²_c,i − r²_b,i and V = s²_d/n, which removes the shared noise of the
labels and needs far fewer of them.

Squared errors are heavy-tailed, so the normal approximation behind V is poor for small n: no
verdict is given below `min_n` labeled predictions per arm. Simulations (`bench/canary_power.py`
and its smaller test) check the false-fail rate on Student-t residuals and lognormal targets
read every 50 labels, beside a naive fixed-n test read the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Judgement", "MixtureSPRT", "SampleMoments", "judge", "moments"]


@dataclass(frozen=True)
class SampleMoments:
    """n, mean and (population) centred sum of squares of a sample of squared errors."""

    n: int
    mean: float
    m2: float

    @property
    def variance(self) -> float:
        return self.m2 / (self.n - 1) if self.n > 1 else math.inf


def moments(values: np.ndarray) -> SampleMoments:
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return SampleMoments(0, 0.0, 0.0)
    mean = float(values.mean())
    return SampleMoments(len(values), mean, float(((values - mean) ** 2).sum()))


@dataclass(frozen=True)
class MixtureSPRT:
    alpha: float = 0.05
    tau_rel: float = 0.1  # mixing sd as a fraction of the control MSE: effects of ~10% are likely

    def likelihood_ratio(self, delta: float, variance: float, tau: float) -> float:
        if variance <= 0 or tau <= 0:
            return math.inf if delta != 0 else 1.0
        t2 = tau * tau
        log_l = 0.5 * math.log(variance / (variance + t2)) + delta * delta * t2 / (2 * variance * (variance + t2))
        return math.exp(min(log_l, 700.0))

    def half_width(self, variance: float, tau: float) -> float:
        if variance <= 0:
            return 0.0
        t2 = tau * tau
        return math.sqrt(2 * variance * (variance + t2) / t2
                         * (math.log(1 / self.alpha) + 0.5 * math.log((variance + t2) / variance)))


@dataclass(frozen=True)
class Judgement:
    verdict: str  # "pass" | "fail" | "continue"
    reason: str
    p_value: float | None
    delta: float | None  # MSE_canary − MSE_control
    ci: tuple[float, float] | None  # confidence sequence of mse_ratio
    mse_canary: float | None
    mse_control: float | None
    n_canary: int
    n_control: int

    @property
    def mse_ratio(self) -> float | None:
        if self.mse_canary is None or not self.mse_control:
            return None
        return self.mse_canary / self.mse_control


def judge(canary: SampleMoments, control: SampleMoments, *, paired: SampleMoments | None = None,
          alpha: float = 0.05, tau_rel: float = 0.1, margin: float = 0.05, min_n: int = 200) -> Judgement:
    """The verdict on two samples of squared errors (or, in shadow mode, their paired differences).

    fail: the always-valid p-value of Δ = 0 is ≤ α and the canary is worse. pass: the upper
    end of the confidence sequence of the MSE ratio is below 1 + `margin` (the canary is at
    most `margin` worse, at confidence 1 − α). continue: neither yet, or fewer than `min_n`.
    """
    mse_c = canary.mean if canary.n else None
    mse_b = control.mean if control.n else None
    n_c, n_b = (paired.n, paired.n) if paired is not None else (canary.n, control.n)
    if min(n_c, n_b) < min_n:
        return Judgement("continue", f"{min(n_c, n_b)} labeled predictions per arm, fewer than min_n = {min_n}",
                         None, None, None, mse_c, mse_b, n_c, n_b)
    if not mse_b:
        return Judgement("continue", "the control's MSE is 0: no ratio to judge", None, None, None, mse_c, mse_b,
                         n_c, n_b)
    test = MixtureSPRT(alpha, tau_rel)
    if paired is not None:
        delta = paired.mean
        variance = paired.variance / paired.n
    else:
        delta = canary.mean - control.mean
        variance = canary.variance / canary.n + control.variance / control.n
    tau = tau_rel * mse_b
    lr = test.likelihood_ratio(delta, variance, tau)
    p = min(1.0, 1.0 / lr)
    h = test.half_width(variance, tau)
    ci = ((delta - h) / mse_b + 1.0, (delta + h) / mse_b + 1.0)
    if p <= alpha and delta > 0:
        return Judgement("fail", f"the canary's MSE is higher (always-valid p = {p:.3g} ≤ α = {alpha:g})",
                         p, delta, ci, mse_c, mse_b, n_c, n_b)
    if ci[1] < 1.0 + margin:
        return Judgement("pass", f"the canary's MSE is at most {margin:.0%} above the control's "
                         f"(MSE ratio ≤ {ci[1]:.3f} at {1 - alpha:.0%})", p, delta, ci, mse_c, mse_b, n_c, n_b)
    return Judgement("continue", f"not enough evidence yet (MSE ratio in [{ci[0]:.3f}, {ci[1]:.3f}])",
                     p, delta, ci, mse_c, mse_b, n_c, n_b)
