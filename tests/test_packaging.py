"""One import name: the distribution installs `undertow` alone, so a user's own `models` package is theirs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import httpx
import pytest

from tests.conftest import REPO, wait_for
from undertow.worker.dev.broker import free_port
from undertow.worker.dev.sample import SampleStream, write_reference_csv

pytestmark = pytest.mark.postgres


def test_a_wheel_built_from_the_checkout_installs_undertow_and_no_other_top_level_name(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache"),
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("undertow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"undertow"}
    for needed in (
        "undertow/__init__.py",
        "undertow/__main__.py",
        "undertow/worker/cli/__init__.py",
        "undertow/worker/report/report.html.j2",
        "undertow/storage/alembic.ini",
        "undertow/storage/migrations/versions/0001_baseline.py",
        "undertow/models/drift/detectors.py",
    ):
        assert needed in names, needed
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "undertow = undertow.worker.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


USER_MODELS = '''
"""The user's own models.py: the most common module name in ML projects."""
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class Clip(BaseEstimator, TransformerMixin):
    def __init__(self, limit=3.0):
        self.limit = limit

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.clip(np.asarray(X, dtype=float), -self.limit, self.limit)
'''

# Fits a pipeline with the user's Clip (imported from the module named in {module}) on reference.csv.
FIT_CLIP = """
import joblib, pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from {module} import Clip

frame = pd.read_csv("reference.csv")
numeric = ["x0", "x1", "x2", "x3"]
pipeline = make_pipeline(
    ColumnTransformer([("num", Clip(), numeric), ("cat", OneHotEncoder(handle_unknown="ignore"), ["region"])]),
    LinearRegression()).fit(frame[numeric + ["region"]], frame["target"])
joblib.dump(pipeline, "model.joblib")
"""


@pytest.mark.slow
def test_a_pipeline_with_a_transformer_from_the_users_own_models_package_serves_and_retrains(env, tmp_path):
    user = tmp_path / "project"
    (user / "models").mkdir(parents=True)
    (user / "models" / "__init__.py").write_text(textwrap.dedent(USER_MODELS))
    write_reference_csv(SampleStream(seed=2), user / "reference.csv", 4000)
    on_path = {"PYTHONPATH": str(user)}  # how the user's processes find their own `models`
    fitted = subprocess.run(
        [sys.executable, "-c", FIT_CLIP.format(module="models")], cwd=user, capture_output=True, text=True, timeout=120
    )
    assert fitted.returncode == 0, fitted.stderr
    cli = [sys.executable, "-m", "undertow", "--log-level", "WARNING"]
    registered = subprocess.run(
        [
            *cli,
            "models",
            "register",
            "--model-id",
            "housing",
            "--reference",
            "reference.csv",
            "--target",
            "target",
            "--prediction-column",
            "prediction",
            "--artifact",
            "model.joblib",
            *env.cli_args(),
        ],
        cwd=user,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **on_path},
    )
    assert registered.returncode == 0, registered.stderr

    port = free_port()
    # Run from the user's project, as a user does (from Undertow's checkout its own folders come first).
    server = env.start_service("serve", "--model-id", "housing", "--port", str(port), env=on_path, cwd=user)
    # The served row is dated now, the stream a month ago: a join horizon that spans both.
    monitor = env.start_service("monitor", env={**on_path, "UNDERTOW_JOIN_TTL_SECONDS": str(90 * 86400)}, cwd=user)
    trainer = env.start_service(
        "trainer",
        env={
            **on_path,
            "UNDERTOW_MIN_TRAIN_PAIRS": "500",
            "UNDERTOW_GATE_MIN_HOLDOUT": "300",
            "UNDERTOW_WAIT_CHECK_SECONDS": "1",
            "UNDERTOW_MAX_WAIT_SECONDS": "300",
        },
        log_level="INFO",
        group=env.group_id + "-trainer",
        cwd=user,
    )
    try:

        def ready():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return server.poll() is not None

        try:
            wait_for(ready, 60, "the server to load the pipeline")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {env.log_of(server)}") from None
        assert server.poll() is None, env.log_of(server)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/predict",
            json={"features": {"x0": 9.0, "x1": 0.1, "x2": -0.2, "x3": 0.3, "region": "north"}},
            timeout=10,
        )
        assert answer.status_code == 200, (answer.text, env.log_of(server))

        stream = SampleStream(seed=5)
        env.send_events(
            [
                ({**p, "model_version": "1"}, label)
                for p, label in [*stream.events(3000), *stream.events(7000, start_index=3000, concept_shift=1.5)]
            ]
        )

        def decided():
            return env.scalar(
                "SELECT status FROM training_runs WHERE request_id IS NOT NULL "
                "AND status IN ('promoted', 'rejected', 'gave_up', 'failed')"
            )

        try:
            status = wait_for(lambda: decided() or trainer.poll() is not None, 240, "the retrain to be decided")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; requests {env.scalar('SELECT count(*) FROM retrain_requests')}, runs "
                f"{env.scalar('SELECT count(*) FROM training_runs')}, alerts "
                f"{env.scalar('SELECT count(*) FROM alerts')}, pairs "
                f"{env.scalar('SELECT count(*) FROM labelled_pairs')}, stats "
                f"{env.scalar('SELECT sum(predictions) FROM model_stats')}; trainer: "
                f"{env.log_of(trainer)}; monitor: {env.log_of(monitor)}"
            ) from None
        assert status == "promoted", env.log_of(trainer)
        assert env.scalar("SELECT stage FROM model_versions WHERE version = '2'") == "champion"
        wait_for(
            lambda: (
                httpx.post(
                    f"http://127.0.0.1:{port}/predict",
                    json={"features": {"x0": 0.0, "x1": 0.1, "x2": -0.2, "x3": 0.3, "region": "north"}},
                    timeout=10,
                )
                .json()
                .get("model_version")
                == "2"
            ),
            60,
            "the server to answer with the retrained version 2",
        )
    finally:
        for proc in (server, monitor, trainer):
            proc.terminate()
            proc.wait(timeout=60)
    card = json.loads(env.scalar("SELECT model_card FROM model_versions WHERE version = '2'") or "{}")
    assert card, "version 2 has a model card"
