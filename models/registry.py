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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.ids import check_id
from models.profile import ReferenceProfile
from storage.errors import ArtifactIntegrityError, NotFound, UndertowError
from storage.tables import ModelVersion

STAGES = ("candidate", "champion", "archived", "rejected")


class RegistryError(UndertowError):
    """A registration that cannot be done as asked (duplicate version, bad rule)."""


class DriftConfig(BaseModel):
    """Window and alert rules of one model version (defaults chosen in bench/detection.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_size: int = Field(default=1000, ge=50, le=1_000_000)   # predictions per count window
    hop: int | None = Field(default=None, ge=1)                   # evaluate the last window_size every hop
    window_seconds: float | None = Field(default=None, gt=0)      # tumbling event-time windows instead
    max_window_rows: int = Field(default=100_000, ge=100)         # cap of an event-time window's sample
    min_window_rows: int = Field(default=100, ge=10)              # smaller event-time windows are not judged
    psi_moderate: float = Field(default=0.1, gt=0)
    psi_significant: float = Field(default=0.25, gt=0)
    alpha: float = Field(default=0.01, gt=0, lt=1)                # significance needed besides the effect size
    dataset_share: float = Field(default=0.5, gt=0, le=1)         # share of drifted inputs for dataset drift
    end_after: int = Field(default=2, ge=1)                       # stable windows that end an episode
    # Concept drift on the error stream, in units of the baseline error's sd.
    ph_delta: float = Field(default=0.25, ge=0)                   # Page-Hinkley tolerance
    ph_threshold: float = Field(default=50.0, gt=0)               # Page-Hinkley alarm level
    cusum_k: float = Field(default=0.5, gt=0)                     # half the shift CUSUM detects fastest
    cusum_false_alarm_every: float = Field(default=1_000_000, gt=10)  # labels per false alarm (CUSUM's ARL0)
    rolling_window: int = Field(default=500, ge=10)               # labels in the rolling mean
    rolling_step: int = Field(default=50, ge=1)                   # labels between rolling evaluations
    rolling_sigmas: float = Field(default=4.0, gt=0)              # standard errors above the baseline mean
    # Retraining.
    retrain_on_data_drift: bool = True                            # significant dataset drift asks too
    retrain_cooldown_seconds: float = Field(default=86_400, ge=0)  # event time between requests of a model
    retrain_data_policy: Literal["rolling", "all"] = "rolling"
    retrain_window_pairs: int = Field(default=50_000, ge=100)     # labelled pairs of the rolling policy

    @model_validator(mode="after")
    def _consistent(self) -> "DriftConfig":
        if self.psi_significant < self.psi_moderate:
            raise ValueError("psi_significant must be at least psi_moderate")
        if self.hop is not None and self.hop > self.window_size:
            raise ValueError("hop must not exceed window_size")
        if self.rolling_step > self.rolling_window:
            raise ValueError("rolling_step must not exceed rolling_window")
        if self.hop is not None and self.window_seconds is not None:
            raise ValueError("choose count windows (hop) or event-time windows (window_seconds), not both")
        return self


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
