"""The model registry: versions and their stages, the champion and its history, verified artifacts.

Stages: ``candidate`` (registered, not serving), ``champion`` (one per
model), ``archived`` (was champion), ``rejected`` (failed the gate). Every
change of champion appends to ``champion_history`` (which version, since
when, who changed it, why), so "what was serving at time t" has an answer.

Artifacts are copied into the artifact store under
``<artifacts_dir>/<model_id>/<version>/`` and their SHA-256 recorded in the
same transaction; a file written by a transaction that rolls back is
removed again, and an artifact whose bytes do not match the registry is
never loaded. Functions here never commit: the caller owns the session.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from undertow.errors import ArtifactIntegrityError, NotFound, UndertowError
from undertow.models.drift.config import DriftConfig
from undertow.models.ids import check_id
from undertow.models.importance import importance_shares
from undertow.models.profile import ReferenceProfile
from undertow.models.segments import Segmentation
from undertow.storage.tables import ChampionChange, ModelSetting
from undertow.storage.tables import ModelVersion as ModelVersion  # re-exported: the registry's row type

STAGES = ("candidate", "champion", "archived", "rejected")


class RegistryError(UndertowError):
    """A registration that cannot be done as asked (duplicate version, bad rule)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_model_file(path: Path) -> Any:
    """Load the user's own model file once: it must be a joblib file of an object with ``predict``; the model.

    Only ever called on a file the user names at registration, never on one
    that came over the network (joblib runs code on load).
    """
    import joblib

    if not path.is_file():
        raise RegistryError(f"--artifact {str(path)!r} does not exist")
    try:
        model = joblib.load(path)
    except Exception as exc:  # noqa: BLE001 - whatever unpickling raises, the file is not a model
        hint = (
            "; a class it was pickled with must be importable here: run from the project that defines it, "
            "or put its folder on PYTHONPATH"
            if isinstance(exc, (ImportError, AttributeError))
            else ""
        )
        raise RegistryError(
            f"--artifact {str(path)!r} cannot be loaded as a joblib model file "
            f"({type(exc).__name__}: {str(exc)[:200]}){hint}"
        ) from None
    if not callable(getattr(model, "predict", None)):
        raise RegistryError(f"--artifact {str(path)!r} holds a {type(model).__name__}, which has no predict()")
    return model


def store_artifact(
    source: Path, artifacts_dir: Path, model_id: str, version: str, session: Session | None = None
) -> Path:
    """Copy ``source`` to ``<artifacts_dir>/<model_id>/<version>/``; never overwrite, never leave it.

    The ids are checked against the id pattern, and the target must resolve
    inside the artifacts directory. The copy is written to a temporary file
    and linked into place, which fails if the name exists: an existing
    version's artifact is never replaced (identical bytes are reused).
    """
    check_id(model_id, "--model-id")
    check_id(version, "--version")
    root = artifacts_dir.resolve()
    target = (root / model_id / version / source.name).resolve()
    if target.parent != root / model_id / version or not target.is_relative_to(root):
        raise RegistryError(f"artifact path {target} would leave the artifacts directory {root}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if sha256_file(target) == sha256_file(source):
            return target
        raise RegistryError(f"{target} already exists with other contents; an artifact is never overwritten")
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, temporary)
        os.link(temporary, target)
    except FileExistsError:
        raise RegistryError(f"{target} was written concurrently; an artifact is never overwritten") from None
    finally:
        temporary.unlink(missing_ok=True)
    if session is not None:
        _remove_on_rollback(session, target)
    return target


_WRITTEN = "undertow.artifacts_written"


def _remove_on_rollback(session: Session, path: Path) -> None:
    """The file belongs to the transaction: gone if it rolls back, kept once it commits."""
    session.info.setdefault(_WRITTEN, []).append(path)
    if not event.contains(session, "after_rollback", _discard_written):
        event.listen(session, "after_rollback", _discard_written)
        event.listen(session, "after_commit", _keep_written)


def _discard_written(session: Session) -> None:
    for path in session.info.pop(_WRITTEN, []):
        Path(path).unlink(missing_ok=True)


def _keep_written(session: Session) -> None:
    session.info.pop(_WRITTEN, None)


def _next_version(session: Session, model_id: str) -> str:
    versions = session.scalars(select(ModelVersion.version).where(ModelVersion.model_id == model_id))
    numbers = [int(v) for v in versions if v.isdigit()]
    return str(max(numbers, default=0) + 1)


def environment() -> dict[str, Any]:
    import numpy
    import sklearn

    return {"python": platform.python_version(), "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}


def register(
    session: Session,
    *,
    model_id: str,
    profile: ReferenceProfile,
    artifacts_dir: Path,
    version: str | None = None,
    artifact: Path | None = None,
    drift_config: DriftConfig | None = None,
    baseline_error: tuple[float, float] | None = None,
    error_sample: list[float] | None = None,
    data_sha256: str | None = None,
    card: dict[str, Any] | None = None,
    stage: str = "champion",
    task: str | None = None,
    test_set: dict[str, Any] | None = None,
    run_id: str | None = None,
    actor: str = "operator",
    reason: str = "registered",
    request_id: str | None = None,
    segments: Segmentation | None = None,
) -> ModelVersion:
    """Add a model version; as champion, the previous champion is archived and the history records it.
    ``segments``: drift per segment (models.segments), fixed from the reference."""
    if stage not in STAGES:
        raise RegistryError(f"unknown stage {stage!r}")
    check_id(model_id, "--model-id")
    version = check_id(version, "--version") if version is not None else _next_version(session, model_id)
    if find_version(session, model_id, version) is not None:
        raise RegistryError(f"model {model_id!r} already has a version {version!r}")
    artifact_path = artifact_sha = None
    if artifact is not None:
        model = check_model_file(artifact)
        profile = profile.model_copy(update={"importance": importance_shares(model, test_set, profile, task)})
        target = store_artifact(artifact, Path(artifacts_dir), model_id, version, session)
        artifact_path, artifact_sha = str(target), sha256_file(target)
    generated = _model_card(model_id, version, artifact_sha, task, profile, data_sha256, baseline_error, card)
    row = ModelVersion(
        model_id=model_id,
        version=version,
        stage="candidate",
        created_at=time.time(),
        profile=profile.model_dump_json(),
        drift_config=(drift_config or DriftConfig()).model_dump_json(),
        feature_schema=json.dumps({name: f.kind for name, f in profile.features.items()}),
        model_card=json.dumps(generated, default=str),
        artifact_path=artifact_path,
        artifact_sha256=artifact_sha,
        data_sha256=data_sha256,
        baseline_error_mean=baseline_error[0] if baseline_error else None,
        baseline_error_std=baseline_error[1] if baseline_error else None,
        baseline_errors=json.dumps(error_sample) if error_sample else None,
        task=task,
        test_set=json.dumps(test_set) if test_set else None,
        run_id=run_id,
        segments=None if segments is None else segments.model_dump_json(),
    )
    session.add(row)
    session.flush()
    if stage == "champion":
        _make_champion(session, row, "registered", actor, reason, request_id, run_id)
    else:
        row.stage = stage
    return row


def _model_card(
    model_id: str,
    version: str,
    artifact_sha: str | None,
    task: str | None,
    profile: ReferenceProfile,
    data_sha256: str | None,
    baseline_error: tuple[float, float] | None,
    card: dict[str, Any] | None,
) -> dict[str, Any]:
    """The generated model card, extended by the caller's ``card`` sections."""
    generated: dict[str, Any] = {
        "model_details": {
            "model_id": model_id,
            "version": version,
            "registered_at": time.time(),
            "artifact_sha256": artifact_sha,
            "task": task,
        },
        "training_data": {"rows": profile.rows, "sha256": data_sha256, "features": sorted(profile.features)},
        "evaluation": {
            "baseline_error_mean": baseline_error[0] if baseline_error else None,
            "baseline_error_std": baseline_error[1] if baseline_error else None,
        },
        "environment": environment(),
    }
    if profile.importance:  # measured on the held-out rows at registration (models.importance)
        ranked = sorted(profile.importance.items(), key=lambda item: -item[1])
        generated["feature_importance"] = {"method": "permutation, held-out rows", **dict(ranked)}
    for key, value in (card or {}).items():  # the caller's sections extend the generated ones
        generated[key] = (
            generated[key] | value if isinstance(value, dict) and isinstance(generated.get(key), dict) else value
        )
    return generated


def promote(
    session: Session,
    model_id: str,
    version: str,
    *,
    actor: str,
    reason: str,
    request_id: str | None = None,
    run_id: str | None = None,
) -> ModelVersion:
    """Make ``version`` the champion; the current one is archived."""
    row = get_version(session, model_id, version)
    if row.stage == "champion":
        raise RegistryError(f"{model_id} version {version} is already the champion")
    _make_champion(session, row, "promoted", actor, reason, request_id, run_id)
    return row


def rollback(session: Session, model_id: str, *, actor: str, reason: str) -> ModelVersion:
    """Restore the champion before the current one (by the history), archiving the current one."""
    changes = history(session, model_id)
    if not changes:
        raise NotFound(f"model {model_id!r} has no champion history")
    previous = changes[-1].previous_version
    if previous is None:
        raise RegistryError(
            f"{model_id} version {changes[-1].version} was the first champion: there is nothing to roll back to"
        )
    row = get_version(session, model_id, previous)
    _make_champion(session, row, "rolled_back", actor, reason, None, None)
    return row


def reject(session: Session, row: ModelVersion) -> None:
    if row.stage == "champion":
        raise RegistryError(f"{row.model_id} version {row.version} is the champion; it cannot be rejected")
    row.stage = "rejected"


def _make_champion(
    session: Session,
    row: ModelVersion,
    action: str,
    actor: str,
    reason: str,
    request_id: str | None,
    run_id: str | None,
) -> None:
    current = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.model_id == row.model_id, ModelVersion.stage == "champion")
        .with_for_update()
    ).all()
    for previous in current:
        previous.stage = "archived"
    row.stage = "champion"
    seq = (
        session.execute(
            select(func.coalesce(func.max(ChampionChange.seq), 0)).where(ChampionChange.model_id == row.model_id)
        ).scalar_one()
        + 1
    )
    session.add(
        ChampionChange(
            model_id=row.model_id,
            seq=seq,
            version=row.version,
            previous_version=current[0].version if current else None,
            changed_at=time.time(),
            action=action,
            actor=actor,
            reason=reason,
            request_id=request_id,
            run_id=run_id,
        )
    )
    session.flush()


def history(session: Session, model_id: str) -> list[ChampionChange]:
    return list(
        session.scalars(select(ChampionChange).where(ChampionChange.model_id == model_id).order_by(ChampionChange.seq))
    )


def champion_at(session: Session, model_id: str, at: float) -> str | None:
    """The version that was champion at time ``at`` (seconds since the epoch), by the history. ``at`` stands
    for its whole millisecond: the CLI prints times to the millisecond, cut, so a change printed at
    ``…05.123Z`` happened in [.123, .124) and ``--at …05.123Z`` includes it."""
    return session.scalar(
        select(ChampionChange.version)
        .where(ChampionChange.model_id == model_id, ChampionChange.changed_at < at + 0.001)
        .order_by(ChampionChange.seq.desc())
        .limit(1)
    )


def champion(session: Session, model_id: str) -> ModelVersion | None:
    """The champion version of ``model_id`` (its row), or None when it has none."""
    return session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.stage == "champion")
    ).first()


def champions(session: Session, model_ids: list[str]) -> dict[str, str]:
    rows = session.execute(
        select(ModelVersion.model_id, ModelVersion.version).where(
            ModelVersion.model_id.in_(model_ids), ModelVersion.stage == "champion"
        )
    )
    return {model_id: version for model_id, version in rows}


def registered(session: Session, model_ids: list[str]) -> set[str]:
    """Which of ``model_ids`` have at least one registered version."""
    found: set[str] = set()
    for i in range(0, len(model_ids), 2000):  # far below SQLite's and PostgreSQL's bound-parameter limits
        found.update(
            session.scalars(
                select(ModelVersion.model_id).where(ModelVersion.model_id.in_(model_ids[i : i + 2000])).distinct()
            )
        )
    return found


LISTED_IDS = 10  # registered ids an error names at most


def not_registered(session: Session, model_id: str) -> NotFound:
    """The error for an id nobody registered, naming the ids that are (a typo is then plain to see)."""
    ids = list(
        session.scalars(select(ModelVersion.model_id).distinct().order_by(ModelVersion.model_id).limit(LISTED_IDS + 1))
    )
    known = ", ".join(ids[:LISTED_IDS]) + (", ..." if len(ids) > LISTED_IDS else "")
    found = f"registered: {known}" if ids else "no model is registered in this database"
    return NotFound(
        f"model {model_id!r} is not registered ({found}); register it with `undertow models register` "
        "or `undertow train`"
    )


def require_registered(session: Session, model_id: str | None) -> None:
    """NotFound unless ``model_id`` (when given) has a registered version."""
    if model_id is not None and not registered(session, [model_id]):
        raise not_registered(session, model_id)


def find_version(session: Session, model_id: str, version: str) -> ModelVersion | None:
    return session.get(ModelVersion, (model_id, version))


def get_version(session: Session, model_id: str, version: str) -> ModelVersion:
    row = find_version(session, model_id, version)
    if row is None:
        raise NotFound(f"model {model_id!r} has no version {version!r}")
    return row


def list_versions(session: Session, model_id: str | None = None) -> list[ModelVersion]:
    query = select(ModelVersion).order_by(ModelVersion.model_id, ModelVersion.created_at)
    if model_id:
        query = query.where(ModelVersion.model_id == model_id)
    return list(session.scalars(query))


def load_artifact(row: ModelVersion) -> Any:
    """The model object, after checking the artifact's SHA-256 against the registry."""
    import joblib

    if not row.artifact_path:
        raise NotFound(f"model {row.model_id!r} version {row.version!r} has no artifact")
    path = Path(row.artifact_path)
    if not path.is_file():
        raise ArtifactIntegrityError(f"{path}: the artifact of {row.model_id} version {row.version} is missing")
    actual = sha256_file(path)
    if actual != row.artifact_sha256:
        raise ArtifactIntegrityError(
            f"{path}: SHA-256 {actual} does not match the registry's {row.artifact_sha256}; not loading it"
        )
    return joblib.load(path)


def set_spread(session: Session, model_id: str, spread: bool, now: float | None = None) -> None:
    """Spread a model's events over every partition (keyed by event id) or keep them on one (by model id).

    The monitors read it once per batch; producers key by it (``undertow.client`` and ``undertow serve``).
    """
    check_id(model_id, "model id")
    row = session.get(ModelSetting, model_id)
    when = time.time() if now is None else now
    if row is None:
        session.add(ModelSetting(model_id=model_id, spread=spread, updated_at=when))
    elif row.spread != spread:
        row.spread, row.updated_at = spread, when


def spread_models(session: Session) -> set[str]:
    """The models whose events are spread over every partition."""
    return set(session.scalars(select(ModelSetting.model_id).where(ModelSetting.spread)))


def is_spread(session: Session, model_id: str) -> bool:
    row = session.get(ModelSetting, model_id)
    return row is not None and row.spread
