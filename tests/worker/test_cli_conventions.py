"""The command line's conventions (issue 30, point 6): --version, --log-level anywhere, closed pipes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from undertow import __version__


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "undertow", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_version():
    done = _cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"undertow {__version__}"


def test_log_level_is_taken_after_the_subcommand_and_a_bad_one_is_refused_without_a_traceback(tmp_path):
    db = f"sqlite:///{tmp_path / 'u.db'}"
    before = _cli("--log-level", "debug", "models", "list", "--db-url", db)
    after = _cli("models", "list", "--db-url", db, "--log-level", "DEBUG")
    for done in (before, after):
        assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("undertow: error: no database")
    bad = _cli("status", "--log-level", "loud")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "'loud' is not one of DEBUG, INFO, WARNING, ERROR" in bad.stderr


def test_a_closed_pipe_is_one_line_and_a_non_zero_exit(env):
    from undertow.worker.dev.sample import SampleStream
    env.register_reference(SampleStream(seed=1))
    for i in range(3):  # more versions than a pipe's buffer needs to hold the start of the listing
        env.register_reference(SampleStream(seed=i + 2))
    proc = subprocess.Popen([sys.executable, "-m", "undertow", "models", "list", "--json", "--db-url", env.db_url],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before anything was written: `undertow models list | head -0`
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in stderr and stderr.strip().splitlines() == [
        "undertow: error: the output was closed before everything was written (broken pipe)"]
    listed = _cli("models", "list", "--json", "--db-url", env.db_url)
    assert len(json.loads(listed.stdout)) == 4


def test_register_without_target_is_refused_naming_the_columns_that_look_like_one(tmp_path):
    (tmp_path / "ref.csv").write_text("tenure,spend,churned,predicted\n" + "".join(
        f"{i},{i * 2.5},{i % 2},{(i + 1) % 2}\n" for i in range(200)))
    db = f"sqlite:///{tmp_path / 'u.db'}"
    refused = _cli("models", "register", "--model-id", "churn", "--reference", str(tmp_path / "ref.csv"),
                   "--db-url", db)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "--target is missing" in line and "churned, predicted" in line and "--no-target" in line
    assert not (tmp_path / "u.db").exists()  # refused before anything was written
    data_only = _cli("models", "register", "--model-id", "churn", "--reference", str(tmp_path / "ref.csv"),
                     "--no-target", "--db-url", db)
    assert data_only.returncode == 0, data_only.stderr
    assert set(json.loads(data_only.stdout)["features"]) == {"tenure", "spend", "churned", "predicted"}


def test_an_unknown_model_is_one_line_naming_the_registered_ones_and_empty_listings_say_so(env):
    from undertow.worker.dev.sample import SampleStream
    env.register_reference(SampleStream(seed=1))  # "housing"
    args = ["--db-url", env.db_url]
    for command in (["alerts"], ["runs", "list"], ["retrain", "list"], ["models", "list"]):
        unknown = _cli(*command, "--model-id", "housnig", *args)
        assert unknown.returncode == 2, (command, unknown.stderr)
        (line,) = unknown.stderr.strip().splitlines()
        assert line == ("undertow: error: model 'housnig' is not registered (registered: housing); register it "
                        "with `undertow models register` or `undertow train`"), line
    for command, says in ((["alerts"], "no alerts yet"), (["runs", "list"], "no training runs yet"),
                          (["retrain", "list"], "no retrain requests yet")):
        empty = _cli(*command, "--model-id", "housing", *args)
        assert (empty.returncode, empty.stdout.strip()) == (0, says), (command, empty.stderr)
        assert json.loads(_cli(*command, "--json", *args).stdout) == []  # --json stays parseable


def test_an_unknown_model_in_card_history_show_and_report_names_the_registered_ones(env, tmp_path):
    from undertow.worker.dev.sample import SampleStream
    env.register_reference(SampleStream(seed=1))  # "housing"
    for command in (["models", "card"], ["models", "history"], ["models", "show"],
                    ["report", "--out", str(tmp_path / "r.html")]):
        done = _cli(*command, "--model-id", "housnig", *env.cli_args())
        assert done.returncode == 2, (command, done.stderr)
        (line,) = done.stderr.strip().splitlines()
        assert "model 'housnig' is not registered (registered: housing)" in line, (command, line)


def test_register_runs_from_the_users_project_and_warns_without_a_prediction_column(env, tmp_path):
    """The command adds the folder it runs in to the import path (as python -m does): a pipeline with the
    user's own transformer registers from the project without PYTHONPATH."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "transforms.py").write_text(
        "from sklearn.base import BaseEstimator, TransformerMixin\n\n\n"
        "class Identity(BaseEstimator, TransformerMixin):\n"
        "    def fit(self, X, y=None):\n        return self\n\n"
        "    def transform(self, X):\n        return X\n")
    (project / "ref.csv").write_text("a,b,y\n" + "".join(f"{i},{i % 7},{i * 0.5}\n" for i in range(200)))
    fitted = subprocess.run([sys.executable, "-c", (
        "import joblib, pandas as pd\nfrom sklearn.linear_model import LinearRegression\n"
        "from sklearn.pipeline import make_pipeline\nfrom transforms import Identity\n"
        "f = pd.read_csv('ref.csv')\n"
        "joblib.dump(make_pipeline(Identity(), LinearRegression()).fit(f[['a', 'b']], f['y']), 'm.joblib')\n")],
        cwd=project, capture_output=True, text=True, timeout=120)
    assert fitted.returncode == 0, fitted.stderr
    script = str(Path(sys.executable).with_name("undertow"))  # the console script: no cwd on its path of its own
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([script, "models", "register", "--model-id", "m", "--reference", "ref.csv", "--target", "y",
                           "--artifact", "m.joblib", *env.cli_args()], cwd=project, capture_output=True, text=True,
                          timeout=120, env=environ)
    assert done.returncode == 0, done.stderr
    assert "warning: no --prediction-column" in done.stderr and "concept drift is off" in done.stderr
    assert json.loads(done.stdout)["task"] == "regression"
