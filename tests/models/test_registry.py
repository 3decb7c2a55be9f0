import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from tests.conftest import REPO
from undertow.errors import ArtifactIntegrityError
from undertow.models import registry
from undertow.models.dataset import read_table
from undertow.models.profile import PREDICTION_FEATURE, ProfileError, build_profile
from undertow.models.reference import load_reference
from undertow.storage import db

pytestmark = pytest.mark.postgres


@pytest.fixture
def reference_csv(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "ref.csv"
    lines = ["a,b,colour,pred,y"]
    for i in range(500):
        a, b = rng.normal(), rng.normal(5, 2)
        colour = "" if i % 50 == 0 else ["red", "blue"][i % 2]
        lines.append(f"{a},{b},{colour},{a + b},{a + b + rng.normal(0, 0.1)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reference_profile_from_csv(reference_csv):
    ref = load_reference(reference_csv, target="y", prediction="pred")
    features = ref.profile.features
    assert set(features) == {"a", "b", "colour", PREDICTION_FEATURE}
    assert features["a"].kind == "numeric" and len(features["a"].shares) == 10
    assert abs(sum(features["a"].shares) - 1) < 1e-9
    assert features["colour"].kind == "categorical" and features["colour"].missing_share == pytest.approx(0.02)
    assert features["a"].ks_sample == sorted(features["a"].ks_sample)
    mean, std = ref.baseline_error
    assert 0.05 < mean < 0.12 and std > 0


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("", "empty"),
        ("a,a\n1,2\n", "duplicate column"),
        ("a,b\n1\n", "do not have 2 fields"),
        ("a\n\n", "empty"),
    ],
)
def test_bad_reference_files_are_clear_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ProfileError, match=fragment):
        build_profile(read_table(path))


def test_register_versions_champion_and_verified_artifact(engine, tmp_path, reference_csv):
    model = LinearRegression().fit(np.arange(10).reshape(-1, 1), np.arange(10))
    artifact = tmp_path / "model.joblib"
    joblib.dump(model, artifact)
    ref = load_reference(reference_csv, target="y", prediction="pred")
    sessions = db.make_session_factory(engine)
    store = tmp_path / "store"
    with sessions.begin() as s:
        first = registry.register(s, model_id="m", profile=ref.profile, artifacts_dir=store, artifact=artifact)
        second = registry.register(s, model_id="m", profile=ref.profile, artifacts_dir=store, artifact=artifact)
        assert (first.version, second.version) == ("1", "2")
        assert registry.champions(s, ["m"]) == {"m": "2"}
        assert registry.get_version(s, "m", "1").stage == "archived"
        with pytest.raises(registry.RegistryError, match="already has a version"):
            registry.register(s, model_id="m", version="2", profile=ref.profile, artifacts_dir=store)
    with sessions.begin() as s:
        row = registry.get_version(s, "m", "2")
        assert row.artifact_sha256 == registry.sha256_file(artifact)
        assert registry.load_artifact(row).predict([[3.0]])[0] == pytest.approx(3.0)
        with open(row.artifact_path, "r+b") as handle:  # tamper with the stored copy
            handle.seek(10)
            handle.write(b"\x00\x00")
        with pytest.raises(ArtifactIntegrityError, match="does not match"):
            registry.load_artifact(row)


def test_drift_config_rules_are_validated():
    with pytest.raises(ValueError):
        registry.DriftConfig(psi_moderate=0.3, psi_significant=0.2)
    with pytest.raises(ValueError):
        registry.DriftConfig(window_size=100, hop=200)
    for odd in (float("nan"), float("inf")):  # named as what they are, not by a bound NaN fails by accident
        with pytest.raises(ValueError, match="finite number"):
            registry.DriftConfig(cusum_k=odd)


def test_cli_register_and_list(tmp_path, db_url, reference_csv):
    def cli(*args):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "undertow.worker.cli",
                *args,
                "--db-url",
                db_url,
                "--artifacts-dir",
                str(tmp_path / "store"),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = cli(
        "models",
        "register",
        "--model-id",
        "m",
        "--reference",
        str(reference_csv),
        "--target",
        "y",
        "--prediction-column",
        "pred",
        "--window-size",
        "500",
        "--hop",
        "100",
    )
    assert done.returncode == 0, done.stderr
    assert '"window_size": 500' in done.stdout and '"hop": 100' in done.stdout
    # 500 reference rows: a window's PSI against so few is largely chance, said at registration.
    assert "warning: the reference has 500 rows: a window of 500 predictions differs from so few by chance " in (
        done.stderr
    )
    assert "(PSI 0.036 on average" in done.stderr
    listed = cli("models", "list", "--json")
    assert '"stage": "champion"' in listed.stdout
    bad = cli("models", "register", "--model-id", "m", "--reference", str(tmp_path / "missing.csv"))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "does not exist" in bad.stderr
    bad = cli("models", "register", "--model-id", "m", "--reference", str(reference_csv), "--hop", "5000")
    assert bad.returncode == 2 and "hop must not exceed" in bad.stderr


def _register_cli(tmp_path, db_url, reference_csv, *flags):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "undertow.worker.cli",
            "models",
            "register",
            "--db-url",
            db_url,
            "--artifacts-dir",
            str(tmp_path / "store"),
            "--reference",
            str(reference_csv),
            *flags,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.joblib"
    joblib.dump(LinearRegression().fit(np.arange(10).reshape(-1, 1), np.arange(10)), path)
    return path


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model-id", "../../evil"], "--model-id '../../evil' must start with a letter or digit"),
        (["--model-id", "/abs/path"], "--model-id '/abs/path' must start with a letter or digit"),
        (["--model-id", "b", "--version", "../a/1"], "--version '../a/1' must start with a letter or digit"),
        (["--model-id", "m" * 300], "(at most 128 characters)"),
        (["--model-id", "m", "--window-size", "10"], "--window-size: Input should be greater than or equal to 50"),
    ],
)
def test_register_refuses_unsafe_ids_and_names_the_flag(tmp_path, db_url, reference_csv, model_file, flags, message):
    """Issue 7, case 6: ids become path components; nothing is written outside the artifact store."""
    before = sorted(p for p in tmp_path.rglob("*"))
    done = _register_cli(tmp_path, db_url, reference_csv, "--artifact", str(model_file), *flags)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("undertow: error: ") and message in line
    assert sorted(p for p in tmp_path.rglob("*") if not p.name.startswith("undertow")) == before


def test_an_existing_artifact_is_never_overwritten(engine, tmp_path, reference_csv, model_file):
    ref = load_reference(reference_csv, target="y", prediction="pred")
    with db.make_session_factory(engine).begin() as s:
        row = registry.register(
            s, model_id="a", version="1", profile=ref.profile, artifacts_dir=tmp_path / "store", artifact=model_file
        )
    original = registry.sha256_file(Path(row.artifact_path))
    other = tmp_path / "other" / "model.joblib"
    other.parent.mkdir()
    joblib.dump(LinearRegression().fit([[0], [1]], [1, 0]), other)
    with pytest.raises(registry.RegistryError, match="never overwritten"):
        registry.store_artifact(other, tmp_path / "store", "a", "1")
    assert registry.sha256_file(Path(row.artifact_path)) == original
    assert registry.store_artifact(model_file, tmp_path / "store", "a", "1") == Path(row.artifact_path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a pickle at all", "cannot be loaded as a joblib model file"),
        (None, "holds a dict, which has no predict()"),
    ],
)
def test_an_artifact_must_be_a_model(tmp_path, db_url, reference_csv, content, message):
    path = tmp_path / "artifact.bin"
    if content is None:
        joblib.dump({"weights": [1, 2]}, path)
    else:
        path.write_bytes(content)
    done = _register_cli(tmp_path, db_url, reference_csv, "--model-id", "m", "--no-target", "--artifact", str(path))
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert message in line
    assert not (tmp_path / "store").exists()
