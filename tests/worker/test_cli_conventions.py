"""The command line's conventions (issue 30, point 6): --version, --log-level anywhere, closed pipes."""
from __future__ import annotations

import json
import subprocess
import sys

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
