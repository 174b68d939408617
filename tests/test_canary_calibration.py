"""The canary judge (`msewatch.monitor.sequential.judge`) read after every 50 labels, by simulation.

A smaller run of `bench/canary_power.py` (imported from the file; its docstring describes the
data): 250 rollouts per tail and mode, Student-t residuals with 3 and 5 degrees of freedom,
split traffic and shadow (paired) mode, reads every 50 labels per arm from 200 up to 10,000.
Identical models (equal MSE) for the false fails, a canary with +25% MSE for the power. A
naive one-sided z-test read the same way runs on the same data. Fixed seed; the simulation
runs once for the module. Every test prints its figures, one line each (`pytest -s`).

Measured with this seed (250 rollouts per tail and mode, 10,000 labels per arm):

    identical models      mSPRT false fails   naive z-test false fails
    df 3 split            0.0%                29.6%
    df 3 shadow           0.4%                27.2%
    df 5 split            0.4%                25.2%
    df 5 shadow           0.4%                35.6%
    MSE x 1.25            mSPRT power         median labels per arm to the fail verdict
    df 3 split            57.6%               8,900
    df 3 shadow           83.6%               3,975
    df 5 split            100.0%              1,850
    df 5 shadow           100.0%              1,225
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "canary_power.py"
SEED = 20260101
ROLLOUTS = 250
MAX_LABELS = 10_000
DFS = (3.0, 5.0)
EFFECT = 1.25
ALPHA = 0.05
TOLERANCE = 3 * math.sqrt(ALPHA * (1 - ALPHA) / ROLLOUTS)  # 3 binomial SE at alpha: 0.041


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_canary_power_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sim() -> dict[str, Any]:
    cp = _load_bench()
    check = cp.Check()
    results = {
        (df, mode): cp.simulate(df, mode, (1.0, EFFECT), rollouts=ROLLOUTS, max_labels=MAX_LABELS, seed=SEED,
                                judges=("msprt", "naive"), chunk=125, check_rows=3, check=check)
        for df in DFS
        for mode in cp.MODES
    }
    return {"cp": cp, "check": check, "results": results}


def test_the_vectorised_verdicts_are_judges(sim: dict[str, Any]) -> None:
    check = sim["check"]
    print(f"\nvectorised mSPRT against judge(): {check.calls} reads compared, {check.mismatches} disagree; "
          f"moments within {check.max_rel_moment_err:.1e} relative")
    assert check.calls > 2 * ROLLOUTS * len(DFS) * 2
    assert check.mismatches == 0, check.examples
    assert check.max_rel_moment_err < 1e-9


def test_msprt_false_fails_stay_within_alpha(sim: dict[str, Any]) -> None:
    print()
    for (df, mode), res in sim["results"].items():
        o = res[(1.0, "msprt")]
        print(f"identical models, df {df:g} {mode:<6}: mSPRT false fails {o.fail_rate():.1%} "
              f"(fail ever, reading on after a pass: {o.fail_ever_rate():.1%}), passes {o.pass_rate():.1%}; "
              f"bound alpha + 3 SE = {ALPHA + TOLERANCE:.1%}")
    for (df, mode), res in sim["results"].items():
        o = res[(1.0, "msprt")]
        assert o.fail_ever_rate() <= ALPHA + TOLERANCE, (df, mode, o.fail_ever_rate())
        assert o.fail_rate() <= o.fail_ever_rate()


def test_a_naive_test_read_as_often_fails_good_canaries(sim: dict[str, Any]) -> None:
    print()
    for (df, mode), res in sim["results"].items():
        naive, msprt = res[(1.0, "naive")], res[(1.0, "msprt")]
        print(f"identical models, df {df:g} {mode:<6}: naive z-test false fails {naive.fail_rate():.1%} "
              f"against mSPRT {msprt.fail_ever_rate():.1%}, same data")
    for (df, mode), res in sim["results"].items():
        naive, msprt = res[(1.0, "naive")], res[(1.0, "msprt")]
        assert naive.fail_rate() > 2 * ALPHA, (df, mode, naive.fail_rate())
        assert naive.fail_rate() > msprt.fail_ever_rate() + 0.1, (df, mode)


# Lower bounds on the power of the mSPRT against +25% MSE within 10,000 labels per arm (measured:
# 57.6%, 83.6%, 100%, 100%). High where the tails allow it; with 3 degrees of freedom (r² of
# infinite variance) split traffic fails the worse canary in only about half of the rollouts by
# 10,000 labels per arm, so its bound is low.
MIN_POWER = {(3.0, "split"): 0.4, (3.0, "shadow"): 0.7, (5.0, "split"): 0.95, (5.0, "shadow"): 0.95}


def test_msprt_power_against_25_percent_more_mse(sim: dict[str, Any]) -> None:
    print()
    for (df, mode), res in sim["results"].items():
        o = res[(EFFECT, "msprt")]
        print(f"MSE x {EFFECT:g}, df {df:g} {mode:<6}: mSPRT power {o.fail_rate():.1%} within {MAX_LABELS:,} labels "
              f"(bound {MIN_POWER[(df, mode)]:.0%}), median labels to fail {o.median_labels('fail'):,.0f}, "
              f"wrong passes {o.pass_rate():.1%}")
    for (df, mode), res in sim["results"].items():
        o = res[(EFFECT, "msprt")]
        assert o.fail_rate() >= MIN_POWER[(df, mode)], (df, mode, o.fail_rate())
        assert o.pass_rate() <= ALPHA, (df, mode, o.pass_rate())


def test_shadow_mode_needs_fewer_labels_than_split(sim: dict[str, Any]) -> None:
    print()
    res = sim["results"]
    for df in DFS:
        split, shadow = res[(df, "split")][(EFFECT, "msprt")], res[(df, "shadow")][(EFFECT, "msprt")]
        print(f"MSE x {EFFECT:g}, df {df:g}: median labels per arm to the fail verdict, shadow "
              f"{shadow.median_labels('fail'):,.0f} against split {split.median_labels('fail'):,.0f} "
              f"(power {shadow.fail_rate():.1%} against {split.fail_rate():.1%})")
    for df in DFS:
        split, shadow = res[(df, "split")][(EFFECT, "msprt")], res[(df, "shadow")][(EFFECT, "msprt")]
        assert shadow.median_labels("fail") < split.median_labels("fail"), df
        assert shadow.fail_rate() >= split.fail_rate(), df
