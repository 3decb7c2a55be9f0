"""The concept-drift stage: join labels to predictions, watch the error streams, ask for retraining.

``stage``: the pipeline stage (the join, the pairs, the monitors of the batch's versions);
``monitor``: one version's monitor (its error stream and log-loss stream, their alerts, its stored state).
The domain pieces live in models/drift: production_baseline, detector_bank, concept_episode, error_stream,
concept_state.
"""

from undertow.worker.monitor.concept.monitor import ErrorStreamMonitor
from undertow.worker.monitor.concept.pairs import Pair
from undertow.worker.monitor.concept.stage import ConceptStage

__all__ = ["ConceptStage", "ErrorStreamMonitor", "Pair"]
