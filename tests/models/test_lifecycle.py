"""The gate on its own (noise never promotes, a real gain does), the registry's lifecycle and history,
and the time-ordered split, against a real database."""

import math

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from sqlalchemy import text

from undertow.errors import NotFound
from undertow.models import candidate, gate, registry, runs, training
from undertow.models.profile import build_profile
from undertow.storage import db

pytestmark = pytest.mark.postgres


def test_two_equally_good_models_are_promoted_at_most_at_the_nominal_rate():
    """The failure mode of comparing two numbers: on noise the better-looking model wins half the time."""
    rules, passed, naive = gate.GateRules(), 0, 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        truth = rng.normal(size=600)
        champion = np.abs(truth + rng.normal(0, 0.5, 600) - truth)  # same model quality, different noise
        challenger = np.abs(truth + rng.normal(0, 0.5, 600) - truth)
        naive += challenger.mean() < champion.mean()
        passed += gate.judge(
            champion, challenger, rules, champion_sha256="a", candidate_sha256="b", own_test=None, seed=seed
        ).passed
    assert naive > 70  # a single-number comparison "improves" about half the time
    assert passed <= 8  # one-sided 2.5 % nominal: 5 expected of 200


def test_a_real_improvement_passes_and_every_rule_can_fail_it():
    rng = np.random.default_rng(1)
    champion = np.abs(rng.normal(0, 1.0, 2000))
    better = np.abs(rng.normal(0, 0.6, 2000))
    ok = gate.judge(champion, better, gate.GateRules(), champion_sha256="a", candidate_sha256="b", own_test=(0.5, 0.52))
    assert ok.passed and ok.numbers["improvement_low"] > 0.2
    few = gate.judge(
        champion[:100], better[:100], gate.GateRules(), champion_sha256="a", candidate_sha256="b", own_test=None
    )
    assert not few.passed and "only 100 held-out pairs" in few.reasons[0]
    forgot = gate.judge(
        champion, better, gate.GateRules(), champion_sha256="a", candidate_sha256="b", own_test=(0.5, 0.6)
    )
    assert not forgot.passed and "own test set" in forgot.reasons[0]
    same = gate.judge(champion, better, gate.GateRules(), champion_sha256="a", candidate_sha256="a", own_test=None)
    assert same.reasons == ["the candidate's artifact is the champion's"]
    gain = gate.judge(
        champion, better, gate.GateRules(min_gain=0.5), champion_sha256="a", candidate_sha256="b", own_test=None
    )
    assert not gain.passed and "minimum gain 0.5" in gain.reasons[0]


def test_the_split_holds_out_the_newest_rows_after_a_gap():
    times = np.random.default_rng(2).permutation(1000).astype(float)
    split = training.split_by_time(times, holdout_fraction=0.25, gap_fraction=0.02, min_holdout=300)
    assert split.holdout.size == 300 and split.gap == 20 and split.train.size == 680
    assert times[split.train].max() < times[split.holdout].min() - 20
    with pytest.raises(training.TrainingError, match="cannot give"):
        training.split_by_time(times[:301], holdout_fraction=0.25, min_holdout=300)


def _register(session, store, version=None, stage="champion"):
    model = LinearRegression().fit(np.arange(10.0).reshape(-1, 1), np.arange(10.0) * (1 + len(store.name)))
    path = candidate.dump_model(model)
    profile = build_profile({"x": [float(i) for i in range(100)]})
    return registry.register(
        session,
        model_id="m",
        profile=profile,
        artifacts_dir=store,
        artifact=path,
        version=version,
        stage=stage,
        reason="test",
    )


def test_promote_rollback_and_the_champion_at_any_time(engine, tmp_path):
    sessions = db.make_session_factory(engine)
    with sessions.begin() as s:
        _register(s, tmp_path)
        _register(s, tmp_path, stage="candidate")
        registry.promote(s, "m", "2", actor="trainer", reason="gate passed", request_id="r1", run_id="run-1")
    with sessions.begin() as s:
        assert registry.champions(s, ["m"]) == {"m": "2"}
        assert registry.champion(s, "m").version == "2" and registry.champion(s, "other") is None
        assert registry.find_version(s, "m", "1").stage == "archived" and registry.find_version(s, "m", "9") is None
        assert registry.get_version(s, "m", "1").stage == "archived"
        promoted_at = registry.history(s, "m")[-1].changed_at
        restored = registry.rollback(s, "m", actor="operator", reason="bad outcome")
        assert restored.version == "1"
    with sessions.begin() as s:
        history = [(h.version, h.previous_version, h.action, h.actor) for h in registry.history(s, "m")]
        assert history == [
            ("1", None, "registered", "operator"),
            ("2", "1", "promoted", "trainer"),
            ("1", "2", "rolled_back", "operator"),
        ]
        assert registry.champion_at(s, "m", promoted_at) == "2"
        # As the CLI prints it (cut to the millisecond) and `models history --at` reads it back.
        assert registry.champion_at(s, "m", math.floor(promoted_at * 1000) / 1000) == "2"
        assert registry.champion_at(s, "m", promoted_at - 3600) is None
        with pytest.raises(registry.RegistryError, match="already the champion"):
            registry.promote(s, "m", "1", actor="operator", reason="again")
        with pytest.raises(registry.RegistryError, match="is the champion; it cannot be rejected"):
            registry.reject(s, registry.get_version(s, "m", "1"))
        with pytest.raises(NotFound, match="no version '9'"):
            registry.promote(s, "m", "9", actor="operator", reason="x")


def test_a_first_champion_cannot_be_rolled_back(engine, tmp_path):
    with db.make_session_factory(engine).begin() as s:
        _register(s, tmp_path)
        with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
            registry.rollback(s, "m", actor="operator", reason="x")


def test_an_artifact_written_by_a_transaction_that_rolls_back_is_removed(engine, tmp_path):
    sessions = db.make_session_factory(engine)
    with pytest.raises(RuntimeError):
        with sessions.begin() as s:
            row = _register(s, tmp_path)
            written = row.artifact_path
            assert joblib.load(written) is not None
            raise RuntimeError("the transaction fails after the artifact was written")
    assert not list(tmp_path.rglob("*.joblib"))
    with sessions.begin() as s:
        kept = _register(s, tmp_path).artifact_path
    assert [str(p) for p in tmp_path.rglob("*.joblib")] == [kept] and written == kept


def test_finished_runs_are_mirrored_to_mlflow_and_a_broken_mirror_only_warns(tmp_path, caplog):
    mlflow = pytest.importorskip("mlflow")
    from undertow.models.runs import mirror_to_mlflow

    run = {
        "run_id": "run-1",
        "model_id": "m",
        "status": "promoted",
        "outcome": "gate passed",
        "request_id": "r1",
        "candidate_version": "2",
        "params": {"task": "regression", "min_holdout": 500},
        "metrics": {"gate": {"improvement_low": 0.1, "champion_sha256": "abc"}, "candidate": {"mae": 0.4}},
        "data": {"pairs": 1000},
        "durations": {"fit_seconds": 1.2},
    }
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mirrored = mirror_to_mlflow(uri, run)
    got = mlflow.MlflowClient(tracking_uri=uri).get_run(mirrored).data
    assert got.params == {"task": "regression", "min_holdout": "500"}
    assert got.metrics["metrics.gate.improvement_low"] == 0.1 and got.metrics["data.pairs"] == 1000
    assert got.tags["undertow.run_id"] == "run-1" and got.tags["undertow.candidate_version"] == "2"
    assert mirror_to_mlflow(f"file:{tmp_path / 'nowhere'}/mlruns", run) is None  # deprecated store: refused
    assert "could not mirror run run-1" in caplog.text


def test_run_statuses_are_stored_as_the_plain_strings_earlier_releases_wrote(engine):
    """RunStatus is a StrEnum: the column holds 'running', 'promoted', ...; a row read back compares equal."""
    from undertow.models.runs import RunStatus

    assert [s.value for s in RunStatus] == [
        "accepted",
        "waiting",
        "running",
        "promoted",
        "rejected",
        "gave_up",
        "failed",
        "registered",
    ]
    sessions = db.make_session_factory(engine)
    with sessions.begin() as s:
        run = runs.new_run(s, run_id="run-1", model_id="m", champion_version=None, trigger={})
        runs.finish(run, RunStatus.GAVE_UP, "too few pairs")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM training_runs")).scalar_one() == "gave_up"
    with sessions() as s:
        (stored,) = runs.list_runs(s, status=(RunStatus.GAVE_UP,))
        assert stored.status == RunStatus.GAVE_UP and runs.find_run(s, "run-2") is None
