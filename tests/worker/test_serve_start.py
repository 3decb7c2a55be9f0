"""`undertow serve` checks at start-up that it has something to serve (issue 30, point 5): an unknown model id,
a champion without an artifact and an artifact that cannot be loaded (a pickled class whose module is not
importable) each end the process with exit code 2 and one line on stderr, well before a port is bound; a
servable champion still starts and is ready."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, wait_for
from tests.test_packaging import FIT_CLIP, USER_MODELS  # the user's Clip transformer and its fit, one copy
from tests.worker.test_trainer import _train_v1
from undertow.worker.dev.broker import free_port
from undertow.worker.dev.sample import SampleStream, write_reference_csv

EXIT_WITHIN = 10.0  # seconds: the acceptance bound; the check itself takes about as long as the imports

# A transformer from the user's own code: pickled by reference to this module, which serve must import.
USER_MODULE = (
    USER_MODELS
    + '''


class Refuses(BaseEstimator):
    """Predicts where it was registered, not where it is served (as a model needing a missing resource)."""

    def fit(self, X, y=None):
        return self

    def predict(self, X):
        import os
        if os.environ.get("SERVE_START_REFUSE"):
            raise ValueError("this model refuses every row\\nand says more on a second line")
        return np.zeros(len(X))
'''
)

FIT = FIT_CLIP.format(module="serve_start_transforms")

FIT_REFUSING = """
import joblib
from serve_start_transforms import Refuses
joblib.dump(Refuses(), "model.joblib")
"""


def _without_pythonpath(**extra: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**environ, **extra}


def _serve_args(env, model_id: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "undertow",
        "serve",
        "--model-id",
        model_id,
        *env.cli_args(),
        "--port",
        str(free_port()),
    ]


def _serve_refused(env, model_id: str, cwd: Path = REPO, environ: dict | None = None) -> tuple[str, float]:
    """Run serve as a user does (default log level); its one stderr line, after asserting exit 2 in time."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            _serve_args(env, model_id),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=EXIT_WITHIN,
            env=environ or _without_pythonpath(),
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"serve still running after {EXIT_WITHIN} s; stderr: {exc.stderr!r}") from None
    took = time.monotonic() - started
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("undertow: error: "), lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""
    return lines[0], took


def test_an_unknown_model_id_exits_2_naming_the_registered_ones(env):
    env.register_reference(SampleStream(seed=2), model_id="housing")
    env.register_reference(SampleStream(seed=3), model_id="churn")
    line, _ = _serve_refused(env, "nope")
    assert "model 'nope' is not registered (registered: churn, housing)" in line
    assert "undertow models register" in line and "undertow train" in line


def test_an_empty_registry_exits_2_saying_nothing_is_registered(env):
    line, _ = _serve_refused(env, "housing")
    assert "model 'housing' is not registered (no model is registered in this database)" in line


def test_a_registered_model_without_a_champion_exits_2_saying_to_promote_one(env):
    from sqlalchemy import text

    env.register_reference(SampleStream(seed=2))
    with env.engine.begin() as conn:  # a candidate only (as the trainer registers them), never promoted
        conn.execute(text("UPDATE model_versions SET stage = 'candidate'"))
    line, _ = _serve_refused(env, "housing")
    assert "model 'housing' has no champion (versions: 1 candidate); promote one with `undertow models promote`" in line


def test_a_champion_without_an_artifact_exits_2_saying_to_register_one(env):
    env.register_reference(SampleStream(seed=2))  # monitoring only: a reference, no artifact
    line, _ = _serve_refused(env, "housing")
    assert "model 'housing' version 1 has no artifact: register it with --artifact to serve it" in line


def test_a_database_that_does_not_exist_exits_2_in_one_line(env, tmp_path):
    args = _serve_args(env, "housing")
    missing = tmp_path / "nowhere.db"
    done = subprocess.run(
        [*args, "--db-url", f"sqlite:///{missing}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=EXIT_WITHIN,
        env=_without_pythonpath(),
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()] and str(missing) in done.stderr, done.stderr


def _register_user_model(env, tmp_path: Path, fit: str) -> Path:
    """A model using a class from the user's module `serve_start_transforms`, fitted and registered from the
    user's project with that module on PYTHONPATH; the module's directory is returned."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "serve_start_transforms.py").write_text(textwrap.dedent(USER_MODULE))
    project = tmp_path / "project"
    project.mkdir()
    write_reference_csv(SampleStream(seed=2), project / "reference.csv", 2000)
    on_path = _without_pythonpath(PYTHONPATH=str(code))
    fitted = subprocess.run(
        [sys.executable, "-c", fit], cwd=project, capture_output=True, text=True, timeout=120, env=on_path
    )
    assert fitted.returncode == 0, fitted.stderr
    registered = subprocess.run(
        [
            sys.executable,
            "-m",
            "undertow",
            "--log-level",
            "WARNING",
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
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env=on_path,
    )
    assert registered.returncode == 0, registered.stderr
    return code


@pytest.fixture
def custom_pipeline(env, tmp_path) -> Path:
    return _register_user_model(env, tmp_path, FIT)


def test_an_artifact_whose_class_cannot_be_imported_exits_2_with_the_pythonpath_hint(env, custom_pipeline, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # neither the project nor the module's directory: not importable
    elsewhere.mkdir()
    line, _ = _serve_refused(env, "housing", cwd=elsewhere)
    assert "model 'housing' version 1" in line and "cannot be loaded" in line
    assert "ModuleNotFoundError: No module named 'serve_start_transforms'" in line
    assert "must be importable" in line and "PYTHONPATH" in line, line


def test_a_class_missing_from_an_importable_module_exits_2_with_the_pythonpath_hint(env, custom_pipeline, tmp_path):
    # The module is found but no longer defines the class: pickle's "Can't get attribute" AttributeError.
    (custom_pipeline / "serve_start_transforms.py").write_text("# Clip moved elsewhere\n")
    line, _ = _serve_refused(env, "housing", cwd=tmp_path, environ=_without_pythonpath(PYTHONPATH=str(custom_pipeline)))
    assert "AttributeError: Can't get attribute 'Clip'" in line
    assert "must be importable" in line and "PYTHONPATH" in line, line


def test_a_champion_that_fails_its_warm_up_exits_2_with_the_first_line_of_the_error(env, tmp_path):
    code = _register_user_model(env, tmp_path, FIT_REFUSING)
    line, _ = _serve_refused(
        env, "housing", cwd=tmp_path, environ=_without_pythonpath(PYTHONPATH=str(code), SERVE_START_REFUSE="1")
    )
    assert "model 'housing' version 1 failed its warm-up prediction (ValueError: this model refuses every row)" in line


def _starts(env, cwd: Path = REPO, environ: dict | None = None) -> None:
    args = _serve_args(env, "housing")
    port = int(args[-1])
    log = cwd / f"serve-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=environ or _without_pythonpath()
        )
    env.processes.append(proc)  # killed by the fixture if the test fails midway

    def ready():
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, 60, "the server to be ready")
        answer = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).json()
        assert answer["status"] == "ready" and answer["model_version"] == "1"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        # The version loaded at start-up is counted once, as the follower counted it before.
        assert 'undertow_server_model_swaps_total{outcome="loaded"} 1.0' in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log.read_text()


def test_a_trained_champion_still_starts_and_is_ready(env, tmp_path):
    _train_v1(env)
    _starts(env, cwd=tmp_path)


def test_the_custom_pipeline_starts_once_its_module_is_importable(env, custom_pipeline, tmp_path):
    _starts(env, cwd=tmp_path, environ=_without_pythonpath(PYTHONPATH=str(custom_pipeline)))
