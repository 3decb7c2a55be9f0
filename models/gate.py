"""The evaluation gate: promote a candidate only when it is really better than the champion.

The guard on the champion's own test set catches a candidate that forgot
what the champion knew (a narrow recent window, a regression on rows the
recent data lacks). After a concept change it does not apply: that test
set carries the old concept's labels, on which a model of the new concept
is meant to be worse; the trainer then leaves it out and says so.

Two single numbers do not say that: on a few hundred rows the better of two
equal models wins half the time. The gate therefore scores both models on
the same newest held-out pairs and asks for a paired bootstrap interval of
the per-pair improvement that lies entirely above the minimum gain, plus
guards against the ways a gate is fooled (too few pairs, a candidate that
forgot the champion's own test set, a candidate that is the champion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field


class GateRules(BaseModel):
    """Thresholds of the gate; every one must hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_holdout: int = Field(default=500, ge=30, description="held-out pairs needed to judge at all")
    min_gain: float = Field(
        default=0.0,
        description="the improvement interval's lower end must exceed this "
        "(in error units: champion error minus candidate error)",
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="coverage of the bootstrap interval")
    resamples: int = Field(default=1000, ge=100, description="bootstrap resamples")
    tolerance: float = Field(
        default=0.10, ge=0, description="how much worse (relative) the candidate may be on the champion's own test set"
    )


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]  # why it failed; empty when it passed
    numbers: dict[str, Any]  # everything it measured, recorded with the decision


def paired_bootstrap(
    improvement: npt.NDArray[np.float64],
    resamples: int,
    confidence: float,
    seed: int = 0,
    chunk_elements: int = 5_000_000,
) -> tuple[float, float]:
    """Percentile interval of the mean of per-pair improvements, resampling pairs.

    >>> low, high = paired_bootstrap(np.r_[np.ones(500), np.zeros(500)], 1000, 0.95)
    >>> 0.45 < low < 0.5 < high < 0.55
    True
    """
    n = improvement.size
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    per_chunk = max(1, chunk_elements // max(n, 1))  # bounded memory at any n
    for start in range(0, resamples, per_chunk):
        count = min(per_chunk, resamples - start)
        means[start : start + count] = improvement[rng.integers(0, n, size=(count, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def judge(
    champion_errors: npt.NDArray[np.float64],
    candidate_errors: npt.NDArray[np.float64],
    rules: GateRules,
    *,
    champion_sha256: str | None,
    candidate_sha256: str,
    own_test: tuple[float, float] | None,
    own_test_note: str = "the champion has no test set",
    seed: int = 0,
) -> GateDecision:
    """Decide on the same held-out pairs; ``own_test`` is (champion, candidate) mean error on the champion's test set.

    >>> rng = np.random.default_rng(1)
    >>> champion = np.abs(rng.normal(size=2000)) + 0.3
    >>> better = judge(champion, champion - 0.2, GateRules(), champion_sha256="a", candidate_sha256="b",
    ...                own_test=(1.0, 1.05))
    >>> better.passed, better.reasons
    (True, [])
    >>> same = judge(champion, champion + rng.normal(0, 0.01, 2000), GateRules(), champion_sha256="a",
    ...              candidate_sha256="b", own_test=(1.0, 1.0))
    >>> same.passed
    False
    """
    n = int(champion_errors.size)
    numbers: dict[str, Any] = {
        "holdout_pairs": n,
        "min_holdout": rules.min_holdout,
        "min_gain": rules.min_gain,
        "confidence": rules.confidence,
        "resamples": rules.resamples,
        "tolerance": rules.tolerance,
        "champion_sha256": champion_sha256,
        "candidate_sha256": candidate_sha256,
    }
    reasons = []
    if n != candidate_errors.size:
        raise ValueError("champion and candidate must be scored on the same pairs")
    if n:
        improvement = champion_errors - candidate_errors
        numbers |= {
            "champion_mean_error": float(champion_errors.mean()),
            "candidate_mean_error": float(candidate_errors.mean()),
            "mean_improvement": float(improvement.mean()),
        }
    if n < rules.min_holdout:
        reasons.append(f"only {n} held-out pairs; at least {rules.min_holdout} are needed to judge")
    else:
        low, high = paired_bootstrap(improvement, rules.resamples, rules.confidence, seed)
        numbers |= {"improvement_low": low, "improvement_high": high}
        if low <= rules.min_gain:
            reasons.append(
                f"the {rules.confidence:.0%} interval of the improvement [{low:.4g}, {high:.4g}] "
                f"does not lie above the minimum gain {rules.min_gain:g}"
            )
    if own_test is not None:
        champion_own, candidate_own = own_test
        numbers |= {"champion_own_test_error": champion_own, "candidate_own_test_error": candidate_own}
        if candidate_own > champion_own * (1 + rules.tolerance):
            reasons.append(
                f"on the champion's own test set the candidate's error {candidate_own:.4g} is more "
                f"than {rules.tolerance:.0%} above the champion's {champion_own:.4g}"
            )
    else:
        numbers["own_test"] = own_test_note
    if champion_sha256 is not None and champion_sha256 == candidate_sha256:
        reasons.append("the candidate's artifact is the champion's")
    return GateDecision(not reasons, reasons, numbers)
