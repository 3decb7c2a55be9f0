"""The escalation rule of episodes opened before concept-state format 10, kept so that they go on as the
code that opened them did (tests/data/concept_state): an episode that is open when a release with format 10
loads it keeps this rule until it ends; every episode after runs ``EpisodeBank``.

The rule: the next ``rolling_window`` errors of predictions made after the change estimate the episode's
level; an upper CUSUM against it (k, in arrival order and in prediction time, at a threshold calibrated on
those errors without allowance for the level being an estimate) escalates when the error rises again, and
the level is then measured anew. It misses further changes smaller than the first and never sees a fall.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from undertow.models.drift.config import DriftConfig
from undertow.models.drift.detectors import Cusum, CusumState, PredictionTimeCusum, PredictionTimeCusumState
from undertow.models.drift.episode_bank import EpisodeChange


class LegacyEscalationState(BaseModel):
    """Format 9's ``episode``: the level, its errors and the escalation detectors."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    level_z: list[float]
    level: float | None
    level_from: float | None  # prediction time the level is measured from
    escalation: CusumState | None
    escalation_pt: PredictionTimeCusumState | None


class LegacyEscalation:
    def __init__(self, config: DriftConfig, state: LegacyEscalationState):
        self.config = config
        self.level_z = list(state.level_z)
        self.level, self.level_from = state.level, state.level_from
        self.escalation: Cusum | None = None
        self.escalation_pt: PredictionTimeCusum | None = None
        if state.level is not None:
            if state.escalation is None or state.escalation_pt is None:
                raise ValueError("an episode state with a level needs the states of its escalation detectors")
            escalation, escalation_pt = self._start_escalation()
            escalation.from_state(state.escalation)
            escalation_pt.from_state(state.escalation_pt)

    def _measure_level_from(self, prediction_ts: float) -> None:
        self.level_z, self.level, self.escalation, self.escalation_pt = [], None, None, None
        self.level_from = prediction_ts

    def _start_escalation(self) -> tuple[Cusum, PredictionTimeCusum]:
        c = self.config
        self.level = level = float(np.mean(self.level_z))
        self.escalation = escalation = Cusum(
            c.cusum_k,
            c.cusum_false_alarm_every,
            reference_z=np.array(self.level_z) - level if len(self.level_z) >= 100 else None,
        )
        self.escalation_pt = escalation_pt = PredictionTimeCusum(
            c.cusum_k, escalation.threshold, c.pt_bucket_seconds, c.pt_horizon_buckets
        )
        return escalation, escalation_pt

    def escalate(self, z: float, prediction_ts: float) -> EpisodeChange | None:
        """One standardised error inside the episode: its level measured first, then watched for a rise."""
        level, escalation, escalation_pt = self.level, self.escalation, self.escalation_pt
        if level is None:
            if self.level_from is None or prediction_ts >= self.level_from:
                self.level_z.append(z)
            if len(self.level_z) >= self.config.rolling_window:
                self._start_escalation()
            return None
        if escalation is None or escalation_pt is None:  # set with the level
            raise ValueError("an episode with a level has its escalation detectors")
        escalation.update(z - level)
        escalation_pt.update(z - level, prediction_ts)
        fired: Cusum | PredictionTimeCusum | None = (
            escalation if escalation.drift_detected else (escalation_pt if escalation_pt.drift_detected else None)
        )
        if fired is None:
            return None
        change = escalation_pt.change_ts
        escalated = EpisodeChange("up", fired.statistic, fired.threshold, change)
        self._measure_level_from(change if change is not None else prediction_ts)
        return escalated

    def state(self) -> LegacyEscalationState:
        return LegacyEscalationState(
            level_z=self.level_z,
            level=self.level,
            level_from=self.level_from,
            escalation=None if self.escalation is None else self.escalation.state(),
            escalation_pt=None if self.escalation_pt is None else self.escalation_pt.state(),
        )
