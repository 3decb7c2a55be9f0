"""The drifted inputs of a dataset-drift alert, those that matter most to the model first: the window's PSI
times the input's share of the model's permutation importance (``models.importance``), measured at
registration. A version without it (no artifact, no held-out rows) is ranked by PSI alone."""

from __future__ import annotations

from undertow.models.drift.feature_verdict import FeatureVerdict
from undertow.worker.runtime.output_events import RankedFeature


def rank_drifted(
    verdicts: list[FeatureVerdict], drifted: list[str], importance: dict[str, float] | None
) -> list[RankedFeature]:
    """
    >>> from types import SimpleNamespace as S
    >>> verdicts = [S(name="rooms", stats=S(psi=0.3)), S(name="zip", stats=S(psi=0.9))]
    >>> [(r.feature, r.score) for r in rank_drifted(verdicts, ["rooms", "zip"], {"rooms": 0.8, "zip": 0.05})]
    [('rooms', 0.24), ('zip', 0.045)]
    >>> [r.feature for r in rank_drifted(verdicts, ["rooms", "zip"], None)]
    ['zip', 'rooms']
    """
    chosen = set(drifted)
    ranked = []
    for verdict in verdicts:
        if verdict.name not in chosen:
            continue
        psi = float(verdict.stats.psi)
        weight = None if importance is None else float(importance.get(verdict.name, 0.0))
        score = psi if weight is None else psi * weight
        ranked.append(RankedFeature(feature=verdict.name, psi=round(psi, 6), importance=weight, score=round(score, 6)))
    ranked.sort(key=lambda r: (-r.score, -r.psi, r.feature))
    return ranked
