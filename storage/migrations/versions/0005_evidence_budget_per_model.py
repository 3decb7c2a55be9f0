"""The evidence budget of the data-drift rules is per model: stored configs keep their alert rate.

``evidence_false_alarm_windows`` used to mean one false alarm per that many
windows of *a feature*; it now means per windows of *the model*, split over
its input features. Every registered version stored its config in full
(20,000 by default), so without this each one would silently become d times
stricter (d input features). Its value becomes N / d here: the same
threshold as before. New registrations get the new default.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FIELD = "evidence_false_alarm_windows"
FLOOR = 10.5  # the field must stay above 10
PREDICTION = "__prediction__"

_versions = sa.table(
    "model_versions", sa.column("model_id"), sa.column("version"), sa.column("profile"), sa.column("drift_config")
)


def _rescale(to_model: bool) -> None:
    bind = op.get_bind()
    for model_id, version, profile, config in bind.execute(sa.select(_versions)).all():
        settings = json.loads(config)
        if FIELD not in settings:
            continue
        inputs = max(1, len([name for name in json.loads(profile).get("features", {}) if name != PREDICTION]))
        value = float(settings[FIELD])
        settings[FIELD] = max(value / inputs, FLOOR) if to_model else value * inputs
        bind.execute(
            _versions.update()
            .where(_versions.c.model_id == model_id, _versions.c.version == version)
            .values(drift_config=json.dumps(settings, separators=(",", ":")))
        )


def upgrade() -> None:
    _rescale(to_model=True)


def downgrade() -> None:
    _rescale(to_model=False)
