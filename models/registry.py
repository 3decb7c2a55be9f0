"""The model registry: versions, champion alias, verified artifacts, drift rules.

Artifacts are copied into the artifact store under
``<artifacts_dir>/<model_id>/<version>/`` and their SHA-256 recorded; an
artifact whose bytes do not match is never loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.drift.config import DriftConfig
from models.ids import check_id
from models.profile import ReferenceProfile
from storage.errors import ArtifactIntegrityError, NotFound, UndertowError
from storage.tables import ModelVersion

STAGES = ("candidate", "champion", "archived", "rejected")


class RegistryError(UndertowError):
    """A registration that cannot be done as asked (duplicate version, bad rule)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_model_file(path: Path) -> None:
    """Load the user's own model file once: it must be a joblib file of an object with ``predict``.

    Only ever called on a file the user names at registration, never on one
    that came over the network (joblib runs code on load).
    """
    import joblib
    if not path.is_file():
        raise RegistryError(f"--artifact {str(path)!r} does not exist")
    try:
        model = joblib.load(path)
    except Exception as exc:  # noqa: BLE001 - whatever unpickling raises, the file is not a model
        raise RegistryError(f"--artifact {str(path)!r} is not a joblib model file "
                            f"({type(exc).__name__}: {str(exc)[:200]})") from None
    if not callable(getattr(model, "predict", None)):
        raise RegistryError(f"--artifact {str(path)!r} holds a {type(model).__name__}, which has no predict()")


def store_artifact(source: Path, artifacts_dir: Path, model_id: str, version: str) -> Path:
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
    return target


def _next_version(session: Session, model_id: str) -> str:
    versions = session.scalars(select(ModelVersion.version).where(ModelVersion.model_id == model_id))
    numbers = [int(v) for v in versions if v.isdigit()]
    return str(max(numbers, default=0) + 1)


def _environment() -> dict:
    import numpy
    import sklearn
    return {"python": platform.python_version(), "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}


def register(session: Session, *, model_id: str, profile: ReferenceProfile, artifacts_dir: Path,
             version: str | None = None, artifact: Path | None = None, drift_config: DriftConfig | None = None,
             baseline_error: tuple[float, float] | None = None, error_sample: list[float] | None = None,
             data_sha256: str | None = None,
             card: dict | None = None, stage: str = "champion") -> ModelVersion:
    """Add a model version; as champion, the previous champion is archived."""
    if stage not in STAGES:
        raise RegistryError(f"unknown stage {stage!r}")
    check_id(model_id, "--model-id")
    version = check_id(version, "--version") if version is not None else _next_version(session, model_id)
    if session.get(ModelVersion, (model_id, version)) is not None:
        raise RegistryError(f"model {model_id!r} already has a version {version!r}")
    artifact_path = artifact_sha = None
    if artifact is not None:
        check_model_file(artifact)
        target = store_artifact(artifact, Path(artifacts_dir), model_id, version)
        artifact_path, artifact_sha = str(target), sha256_file(target)
    if stage == "champion":
        for previous in session.scalars(select(ModelVersion).where(
                ModelVersion.model_id == model_id, ModelVersion.stage == "champion")):
            previous.stage = "archived"
    card = {
        "model_details": {"model_id": model_id, "version": version, "registered_at": time.time(),
                          "artifact_sha256": artifact_sha},
        "training_data": {"rows": profile.rows, "sha256": data_sha256, "features": sorted(profile.features)},
        "evaluation": {"baseline_error_mean": baseline_error[0] if baseline_error else None,
                       "baseline_error_std": baseline_error[1] if baseline_error else None},
        "environment": _environment(),
        **(card or {}),
    }
    row = ModelVersion(
        model_id=model_id, version=version, stage=stage, created_at=time.time(),
        profile=profile.model_dump_json(), drift_config=(drift_config or DriftConfig()).model_dump_json(),
        feature_schema=json.dumps({name: f.kind for name, f in profile.features.items()}),
        model_card=json.dumps(card, default=str), artifact_path=artifact_path, artifact_sha256=artifact_sha,
        data_sha256=data_sha256,
        baseline_error_mean=baseline_error[0] if baseline_error else None,
        baseline_error_std=baseline_error[1] if baseline_error else None,
        baseline_errors=json.dumps(error_sample) if error_sample else None)
    session.add(row)
    session.flush()
    return row


def champions(session: Session, model_ids: list[str]) -> dict[str, str]:
    rows = session.execute(select(ModelVersion.model_id, ModelVersion.version).where(
        ModelVersion.model_id.in_(model_ids), ModelVersion.stage == "champion"))
    return {model_id: version for model_id, version in rows}


def get_version(session: Session, model_id: str, version: str) -> ModelVersion:
    row = session.get(ModelVersion, (model_id, version))
    if row is None:
        raise NotFound(f"model {model_id!r} has no version {version!r}")
    return row


def list_versions(session: Session, model_id: str | None = None) -> list[ModelVersion]:
    query = select(ModelVersion).order_by(ModelVersion.model_id, ModelVersion.created_at)
    if model_id:
        query = query.where(ModelVersion.model_id == model_id)
    return list(session.scalars(query))


def load_artifact(row: ModelVersion):
    """The model object, after checking the artifact's SHA-256 against the registry."""
    import joblib
    if not row.artifact_path:
        raise NotFound(f"model {row.model_id!r} version {row.version!r} has no artifact")
    path = Path(row.artifact_path)
    actual = sha256_file(path)
    if actual != row.artifact_sha256:
        raise ArtifactIntegrityError(
            f"{path}: SHA-256 {actual} does not match the registry's {row.artifact_sha256}; not loading it")
    return joblib.load(path)
