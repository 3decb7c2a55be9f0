"""Producers of a spread model (issue 34) on the embedded broker and a real database: ``undertow.client`` with
``spread=True`` and ``undertow serve`` of a model the registry says is spread key predictions and labels by
event id, so a label lands on the partition number of its prediction; the default still keys by model id;
the server follows a change of the setting; ``models register --spread`` and ``models spread`` set it and
``models show`` / ``list`` show it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import joblib
import pytest
from sklearn.dummy import DummyRegressor

from tests.conftest import REPO, wait_for
from tests.worker.test_server import Server
from undertow.client import Client
from undertow.models import registry
from undertow.storage.db import make_session_factory
from undertow.worker.cli import main
from undertow.worker.dev.sample import SampleStream, write_reference_csv

ROWS = 30  # uuid keys over 3 partitions: all on one or two of them has probability 3 * (2/3)**30 < 2e-5


def _model_files(directory: Path) -> tuple[Path, Path]:
    """A reference CSV of the sample stream and an artifact that predicts on its rows (a constant: fast)."""
    import pandas as pd

    reference = directory / "reference.csv"
    write_reference_csv(SampleStream(seed=5), reference, 300)
    frame = pd.read_csv(reference)
    model = DummyRegressor().fit(frame.drop(columns=["prediction", "target"]), frame["target"])
    artifact = directory / "model.joblib"
    joblib.dump(model, artifact)
    return reference, artifact


def _register_args(env, model_id: str, directory: Path, *extra: str) -> list[str]:
    reference, artifact = _model_files(directory)
    return [
        "models",
        "register",
        "--model-id",
        model_id,
        "--reference",
        str(reference),
        "--target",
        "target",
        "--prediction-column",
        "prediction",
        "--artifact",
        str(artifact),
        *extra,
        "--db-url",
        env.db_url,
        "--artifacts-dir",
        str(env.artifacts_dir),
    ]


def _read(env, topic: str, n: int) -> dict:
    """The ``n`` records of ``topic`` by event id: (key, partition)."""
    records = env.read_all(topic, n)
    assert len(records) == n, f"{len(records)} records on {topic}, {n} expected"
    return {json.loads(r.value)["event_id"]: (r.key, r.partition) for r in records}


def _pairs(env, n: int) -> tuple[dict, dict]:
    """``n`` predictions and ``n`` labels, by event id: (key, partition)."""
    return _read(env, env.topics.predictions, n), _read(env, env.topics.labels, n)


def _assert_spread(predictions: dict, labels: dict, ids: list[str]) -> None:
    assert set(predictions) == set(labels) == set(ids)
    for event_id in ids:
        key, partition = predictions[event_id]
        assert key == event_id.encode(), (key, event_id)
        assert labels[event_id] == (key, partition)  # the same key, so the same partition number
    assert len({partition for _, partition in predictions.values()}) > 1


def test_the_client_keys_a_spread_model_by_event_id_and_the_default_by_model_id(env):
    frame = [{"x": float(i), "plan": "pro"} for i in range(ROWS)]
    with Client(bootstrap_servers=env.bootstrap, topic_prefix=env.prefix, spread=True) as client:
        ids = client.log_predictions("clicks", frame[:-1], [0.5] * (ROWS - 1))
        ids.append(client.log_prediction("clicks", frame[-1], 0.5, event_id="given-id"))
        client.log_labels("clicks", ids[:-1], [1.0] * (ROWS - 1))
        client.log_label("clicks", "given-id", 0.0)
        assert client.flush() == 0
    predictions, labels = _pairs(env, ROWS)
    _assert_spread(predictions, labels, ids)

    with Client(bootstrap_servers=env.bootstrap, topic_prefix=env.prefix) as client:  # the default
        assert client.spread is False
        plain = client.log_predictions("housing", frame[:5], [1.0] * 5)
        client.log_labels("housing", plain, [2.0] * 5)
        client.spread = True  # a running client follows a change; each call keys by the value it began with
        switched = client.log_prediction("housing", frame[0], 1.0)
        assert client.flush() == 0
    predictions, labels = _read(env, env.topics.predictions, ROWS + 6), _read(env, env.topics.labels, ROWS + 5)
    assert {predictions[i][0] for i in plain} == {labels[i][0] for i in plain} == {b"housing"}
    assert predictions[switched][0] == switched.encode()


def test_serve_keys_by_the_registry_setting_and_follows_a_change(env, tmp_path):
    # Registered as a user does (a process of its own), spread from the start.
    done = subprocess.run(
        [sys.executable, "-m", "undertow", *_register_args(env, "housing", tmp_path, "--spread")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["spread"] is True
    row = {"x0": 0.1, "x1": -0.2, "x2": 0.3, "x3": 0.0, "region": "north"}

    server = Server(env, extra_env={"UNDERTOW_REGISTRY_CHECK_SECONDS": "0.2"})
    try:
        http = server.client
        assert http.get("/health/ready").json()["keyed_by"] == "event_id"  # read before the first request
        answer = http.post("/predict", json={"instances": [row] * ROWS})
        assert answer.status_code == 200, answer.text
        ids = [p["event_id"] for p in answer.json()["predictions"]]
        posted = http.post("/labels", json={"labels": [{"event_id": i, "label": 1.0} for i in ids]})
        assert posted.status_code == 202, posted.text
        _assert_spread(*_pairs(env, ROWS), ids)

        with make_session_factory(env.engine).begin() as session:
            registry.set_spread(session, "housing", False)
        wait_for(lambda: http.get("/health/ready").json()["keyed_by"] == "model_id", 10, "the server to follow")
        (one,) = http.post("/predict", json={"features": row}).json()["predictions"]
        assert http.post("/labels", json={"labels": [{"event_id": one["event_id"], "label": 1.0}]}).status_code == 202
        predictions, labels = _pairs(env, ROWS + 1)
        assert predictions[one["event_id"]][0] == labels[one["event_id"]][0] == b"housing"
    finally:
        server.stop()
    assert "housing: no longer spread: events are now keyed by model id" in server.log()


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_registers_spread_switches_it_and_shows_it(env, tmp_path, capsys):
    db = ("--db-url", env.db_url)
    code, out, _ = _cli(capsys, *_register_args(env, "clicks", tmp_path, "--spread"))
    assert code == 0 and json.loads(out)["spread"] is True
    code, out, _ = _cli(capsys, *_register_args(env, "housing", tmp_path))
    assert code == 0 and json.loads(out)["spread"] is False

    assert json.loads(_cli(capsys, "models", "show", "--model-id", "clicks", *db)[1])["spread"] is True
    listed = _cli(capsys, "models", "list", *db)[1].splitlines()
    assert [line.split()[0] for line in listed] == ["model_id=clicks", "model_id=housing"]
    assert [line.split()[-1] for line in listed] == ["spread=yes", "spread=no"]
    assert [r["spread"] for r in json.loads(_cli(capsys, "models", "list", "--json", *db)[1])] == [True, False]

    code, out, err = _cli(capsys, "models", "spread", "--model-id", "clicks", "--off", *db)
    assert code == 0 and out == "clicks: spread on -> off (keyed by model id again)\n"
    (warning,) = err.splitlines()
    assert warning.startswith("warning: the monitor now dead-letters events still keyed by event id")
    assert "producers first" in warning
    assert _cli(capsys, "models", "spread", "--model-id", "clicks", "--off", *db)[1:] == (
        "clicks: spread is already off; nothing changed\n",
        "",
    )
    code, out, err = _cli(capsys, "models", "spread", "--model-id", "housing", "--on", *db)
    assert code == 0 and out.startswith("housing: spread off -> on")
    assert "expire unjoined" in err and len(err.splitlines()) == 1
    assert json.loads(_cli(capsys, "models", "show", "--model-id", "housing", *db)[1])["spread"] is True
    assert json.loads(_cli(capsys, "models", "show", "--model-id", "clicks", *db)[1])["spread"] is False

    code, out, err = _cli(capsys, "models", "spread", "--model-id", "clikcs", "--on", *db)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "undertow: error: model 'clikcs' is not registered (registered: clicks, housing); register it with "
        "`undertow models register` or `undertow train`"
    ]
    with pytest.raises(SystemExit):  # --on or --off, not neither
        main(["models", "spread", "--model-id", "clicks", *db])
