"""The command line's conventions (issue 30, point 6): --version, --log-level anywhere, closed pipes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from undertow import __version__


def _cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "undertow", *args], cwd=REPO, capture_output=True, text=True, timeout=120, **kwargs
    )


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
    proc = subprocess.Popen(
        [sys.executable, "-m", "undertow", "models", "list", "--json", "--db-url", env.db_url],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before anything was written: `undertow models list | head -0`
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in stderr and stderr.strip().splitlines() == [
        "undertow: error: the output was closed before everything was written (broken pipe)"
    ]
    listed = _cli("models", "list", "--json", "--db-url", env.db_url)
    assert len(json.loads(listed.stdout)) == 4


def test_register_without_target_is_refused_naming_the_columns_that_look_like_one(tmp_path):
    (tmp_path / "ref.csv").write_text(
        "tenure,spend,churned,predicted\n" + "".join(f"{i},{i * 2.5},{i % 2},{(i + 1) % 2}\n" for i in range(200))
    )
    db = f"sqlite:///{tmp_path / 'u.db'}"
    refused = _cli(
        "models", "register", "--model-id", "churn", "--reference", str(tmp_path / "ref.csv"), "--db-url", db
    )
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "--target is missing" in line and "churned, predicted" in line and "--no-target" in line
    assert not (tmp_path / "u.db").exists()  # refused before anything was written
    data_only = _cli(
        "models",
        "register",
        "--model-id",
        "churn",
        "--reference",
        str(tmp_path / "ref.csv"),
        "--no-target",
        "--db-url",
        db,
    )
    assert data_only.returncode == 0, data_only.stderr
    assert set(json.loads(data_only.stdout)["features"]) == {"tenure", "spend", "churned", "predicted"}


def test_register_with_a_target_but_no_prediction_column_refuses_a_column_that_looks_like_one(tmp_path):
    """From a new-user trial: the prediction column was profiled as an input, a feature producers never send."""
    (tmp_path / "ref.csv").write_text(
        "tenure,spend,churned,predicted\n" + "".join(f"{i},{i * 2.5},{i % 2},{(i + 1) % 2}\n" for i in range(200))
    )
    db = f"sqlite:///{tmp_path / 'u.db'}"
    base = [
        "models",
        "register",
        "--model-id",
        "churn",
        "--reference",
        str(tmp_path / "ref.csv"),
        "--target",
        "churned",
        "--db-url",
        db,
    ]
    refused = _cli(*base)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "--prediction-column is missing" in line and "predicted" in line and "--no-prediction-column" in line
    # Named as the prediction, it is not suggested as a target either.
    no_target = _cli(
        "models",
        "register",
        "--model-id",
        "churn",
        "--reference",
        str(tmp_path / "ref.csv"),
        "--prediction-column",
        "predicted",
        "--db-url",
        db,
    )
    assert "--target is missing" in no_target.stderr and "churned" in no_target.stderr
    assert "predicted" not in no_target.stderr.split("look like one")[1]
    kept = _cli(*base, "--no-prediction-column")
    assert kept.returncode == 0, kept.stderr
    registered = json.loads(kept.stdout)
    assert "predicted" in registered["features"] and registered["baseline_error_mean"] is None


def test_an_unknown_model_is_one_line_naming_the_registered_ones_and_empty_listings_say_so(env):
    from undertow.worker.dev.sample import SampleStream

    env.register_reference(SampleStream(seed=1))  # "housing"
    args = ["--db-url", env.db_url]
    for command in (["alerts"], ["runs", "list"], ["retrain", "list"], ["models", "list"]):
        unknown = _cli(*command, "--model-id", "housnig", *args)
        assert unknown.returncode == 2, (command, unknown.stderr)
        (line,) = unknown.stderr.strip().splitlines()
        assert line == (
            "undertow: error: model 'housnig' is not registered (registered: housing); register it "
            "with `undertow models register` or `undertow train`"
        ), line
    for command, says in (
        (["alerts"], "no alerts (none raised yet, or all older than UNDERTOW_RETAIN_ALERTS_SECONDS)"),
        (["runs", "list"], "no training runs (none yet, or all older than UNDERTOW_RETAIN_TRAINING_RUNS_SECONDS)"),
        (
            ["retrain", "list"],
            "no retrain requests (none yet, or all older than UNDERTOW_RETAIN_RETRAIN_REQUESTS_SECONDS)",
        ),
    ):
        empty = _cli(*command, "--model-id", "housing", *args)
        assert (empty.returncode, empty.stdout.strip()) == (0, says), (command, empty.stderr)
        assert json.loads(_cli(*command, "--json", *args).stdout) == []  # --json stays parseable


def test_an_unknown_model_in_card_history_show_and_report_names_the_registered_ones(env, tmp_path):
    from undertow.worker.dev.sample import SampleStream

    env.register_reference(SampleStream(seed=1))  # "housing"
    for command in (
        ["models", "card"],
        ["models", "history"],
        ["models", "show"],
        ["report", "--out", str(tmp_path / "r.html")],
    ):
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
        "    def transform(self, X):\n        return X\n"
    )
    (project / "ref.csv").write_text("a,b,y\n" + "".join(f"{i},{i % 7},{i * 0.5}\n" for i in range(200)))
    fitted = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import joblib, pandas as pd\nfrom sklearn.linear_model import LinearRegression\n"
                "from sklearn.pipeline import make_pipeline\nfrom transforms import Identity\n"
                "f = pd.read_csv('ref.csv')\n"
                "joblib.dump(make_pipeline(Identity(), LinearRegression()).fit(f[['a', 'b']], f['y']), 'm.joblib')\n"
            ),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fitted.returncode == 0, fitted.stderr
    script = str(Path(sys.executable).with_name("undertow"))  # the console script: no cwd on its path of its own
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [
            script,
            "models",
            "register",
            "--model-id",
            "m",
            "--reference",
            "ref.csv",
            "--target",
            "y",
            "--artifact",
            "m.joblib",
            *env.cli_args(),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )
    assert done.returncode == 0, done.stderr
    assert "warning: no --prediction-column" in done.stderr and "concept drift is off" in done.stderr
    assert json.loads(done.stdout)["task"] == "regression"


# --- help: a description and an example everywhere; only the flags that apply, with their real defaults ---


def _parsers(parser=None, path=()):
    """(command path, parser) of the top level and every command and subcommand."""
    import argparse

    from undertow.worker.cli import build_parser

    parser = parser or build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from _parsers(subparser, (*path, name))


def test_every_command_and_subcommand_has_a_one_line_description_and_an_example():
    paths = []
    for path, parser in _parsers():
        paths.append(" ".join(path))
        text = parser.format_help()
        assert parser.description and "\n" not in parser.description.strip(), path
        assert parser.description in text, path
        example = text[text.index("Example") :] if "Example" in text else ""
        assert example.splitlines()[1].strip().startswith("undertow"), (path, example)
    assert {
        "status",
        "monitor",
        "trainer",
        "report",
        "models register",
        "models history",
        "runs show",
        "retrain close",
        "topics create",
        "demo",
    } <= set(paths)
    shown = _cli("models", "history", "--help")  # as a user sees it: the example as written, on its own line
    assert shown.returncode == 0 and "\nExample:\n  undertow models history --model-id churn --at " in shown.stdout


_KAFKA, _DB, _ARTIFACTS, _TOPICS, _GROUP = (
    "--bootstrap-servers",
    "--db-url",
    "--artifacts-dir",
    "--topic-prefix",
    "--group-id",
)
_USES = {
    "topics create": {_KAFKA, _TOPICS},
    "monitor": {_KAFKA, _DB, _TOPICS, _GROUP},
    "trainer": {_KAFKA, _DB, _ARTIFACTS, _TOPICS, _GROUP},
    "serve": {_KAFKA, _DB, _TOPICS},
    "status": {_KAFKA, _DB, _TOPICS, _GROUP},
    "train": {_DB, _ARTIFACTS},
    "models register": {_DB, _ARTIFACTS},
    "models promote": {_DB, _KAFKA, _TOPICS},
    "models rollback": {_DB, _KAFKA, _TOPICS},
    "broker": set(),
    "demo": set(),
    "notify": {_KAFKA, _DB, _TOPICS, _GROUP},
    "notify test": set(),  # one HTTP request to a sink: no broker, no database
}


def test_each_command_lists_only_the_connection_flags_it_uses_with_the_default_it_really_gets():
    import argparse

    from undertow.worker.runtime.settings import Settings

    fields = Settings.model_fields
    defaults = {
        _KAFKA: fields["kafka_bootstrap_servers"].default,
        _DB: fields["db_url"].default,
        _ARTIFACTS: fields["artifacts_dir"].default,
        _TOPICS: fields["topic_prefix"].default,
    }
    assert fields["group_id"].default is None  # then each service has its own group: group_for
    for path, parser in _parsers():
        name = " ".join(path)
        if not path or parser._subparsers is not None:  # the top level and the groups (models, runs, ...)
            continue
        listed = {
            a.option_strings[0]: a.help
            for a in parser._actions
            if a.option_strings and a.option_strings[0] in defaults.keys() | {_GROUP} and a.help != argparse.SUPPRESS
        }
        assert set(listed) == _USES.get(name, {_DB}), name
        for flag, text in listed.items():
            service = "monitor" if name == "status" else name
            real = f"undertow-{service}" if flag == _GROUP else defaults[flag]
            assert f"(default: {real}; UNDERTOW_" in text, (name, flag, text)
    trainer = _cli("trainer", "--help").stdout
    assert "undertow-trainer" in trainer and "undertow-monitor" not in trainer
    report = _cli("report", "--help").stdout
    for flag in (_GROUP, _KAFKA, _TOPICS, _ARTIFACTS):
        assert flag not in report


def test_every_default_argparse_applies_is_the_one_its_help_names():
    for path, parser in _parsers():
        for action in parser._actions:
            if action.default in (None, False, "==SUPPRESS==") or not action.option_strings or action.help is None:
                continue
            if action.option_strings == ["--help"] or action.help == "==SUPPRESS==":
                continue
            text = action.help % {"default": action.default}
            shown = (str(action.default), f"{action.default:,}" if isinstance(action.default, int) else "")
            assert any(s and s in text for s in shown), (path, action.option_strings, text)


def test_connection_flags_a_command_does_not_use_are_accepted_unlisted():
    """A script may give every command one set of connection flags, as a shared .env gives the variables."""
    from undertow.worker.cli import build_parser

    args = build_parser().parse_args(
        [
            "report",
            "--model-id",
            "m",
            "--group-id",
            "g",
            "--bootstrap-servers",
            "h:1",
            "--topic-prefix",
            "p.",
            "--artifacts-dir",
            "a",
        ]
    )
    assert (args.model_id, args.group_id) == ("m", "g")


# --- listings: --json parses; text shows RFC 3339 times, never epoch seconds, None or a dict ---

_RFC3339 = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z\b")
_EPOCH = re.compile(r"(?<![\w.-])1\d{9}(\.\d+)?(?![\w-])")  # seconds since 1970, 2001 to 2286


def _fill(env):
    """Two versions and a promotion, a finished run (its trigger with the change's start in epoch seconds, as
    the trainer stores it), a closed retrain request with a rolling data policy and a data-drift alert."""
    import time

    from undertow.models import registry, runs
    from undertow.storage import db
    from undertow.storage.tables import RetrainRequest as RetrainRequestRow
    from undertow.worker.dev.sample import SampleStream
    from undertow.worker.monitor.alerts import record_alert
    from undertow.worker.runtime import output_events
    from undertow.worker.runtime.output_events import (
        DataDrift,
        DataDriftAlert,
        RetrainRequest,
        RetrainRequested,
        RollingData,
        Window,
    )

    env.register_reference(SampleStream(seed=1))
    env.register_reference(SampleStream(seed=2))
    now = time.time()
    with db.make_session_factory(env.engine).begin() as session:
        registry.promote(session, "housing", "1", actor="operator", reason="back to one")
        request = RetrainRequested(
            id="req-a",
            subject="housing",
            time="2026-12-06T03:04:05.000Z",
            data=RetrainRequest(
                request_id="req-a",
                model_id="housing",
                model_version="1",
                reason="concept drift (started)",
                alert_ids=["alert-a"],
                data_policy=RollingData(max_pairs=50_000),
            ),
        )
        session.add(
            RetrainRequestRow(
                request_id="req-a",
                model_id="housing",
                version="1",
                status="closed",
                outcome="promoted: gate passed",
                created_ts=now,
                alert_ids='["alert-a"]',
                cloudevent=output_events.encode(request).decode(),
            )
        )
        run = runs.new_run(
            session,
            run_id="run-a",
            model_id="housing",
            champion_version="1",
            request_id="req-a",
            trigger={"reason": "concept drift (started)", "change_at": now - 60},
        )
        run.started_at, run.wait_until = now, now + 120
        runs.finish(
            run, "rejected", "gate failed", metrics={"gate": {"champion_mean_error": 0.5, "candidate_mean_error": 0.6}}
        )
        record_alert(
            session,
            env.topics.alerts,
            DataDriftAlert(
                id="alert-a",
                subject="housing",
                time="2026-12-06T03:04:00.000Z",
                data=DataDrift(
                    model_id="housing",
                    model_version="1",
                    severity="significant",
                    episode="started",
                    feature="median_income",
                    psi=0.35,
                    ks_statistic=0.25,
                    ks_pvalue=1e-9,
                    chi2_statistic=None,
                    chi2_pvalue=None,
                    missing_share=0.0,
                    window=Window(
                        index=3, start_ts="2026-12-06T03:03:00.000Z", end_ts="2026-12-06T03:04:00.000Z", n=1000
                    ),
                ),
            ),
        )


_LISTINGS = (
    ["alerts"],
    ["runs", "list"],
    ["retrain", "list"],
    ["models", "list"],
    ["models", "history", "--model-id", "housing"],
)


def test_every_listing_has_json_and_its_text_shows_rfc3339_times_without_epochs_none_or_dicts(env):
    _fill(env)
    args = ["--db-url", env.db_url]
    for command in _LISTINGS:
        listed = json.loads(_cli(*command, "--json", *args).stdout)
        assert isinstance(listed, list) and listed, command
        assert not _EPOCH.search(json.dumps(listed)), (command, listed)
        text = _cli(*command, *args)
        assert text.returncode == 0 and text.stderr == "", (command, text.stderr)
        lines = text.stdout.strip().splitlines()
        assert lines and all(_RFC3339.search(line) for line in lines), (command, text.stdout)
        for bad in (_EPOCH, re.compile(r"\bNone\b"), re.compile(r"\{'|': ")):
            assert not bad.search(text.stdout), (command, bad.pattern, text.stdout)
    assert "data=rolling(max_pairs=50000)" in _cli("retrain", "list", *args).stdout
    history = _cli("models", "history", "--model-id", "housing", *args).stdout.splitlines()
    assert "(was" not in history[0] and "(was 1)" in history[1] and "(was 2)" in history[2]
    at = json.loads(
        _cli("models", "history", "--model-id", "housing", "--at", "2999-01-01T00:00:00Z", "--json", *args).stdout
    )
    assert at == {"model_id": "housing", "at": "2999-01-01T00:00:00Z", "champion": "1"}
    topics = _cli("topics", "create", "--json", "--bootstrap-servers", env.bootstrap, "--topic-prefix", env.prefix)
    assert {t["topic"] for t in json.loads(topics.stdout)} >= {env.topics.predictions, env.topics.labels}


def test_runs_show_gives_its_times_in_rfc3339(env):
    _fill(env)
    shown = _cli("runs", "show", "run-a", "--db-url", env.db_url)
    assert shown.returncode == 0, shown.stderr
    run = json.loads(shown.stdout)
    for when in (
        run["accepted_at"],
        run["started_at"],
        run["finished_at"],
        run["wait_until"],
        run["trigger"]["change_at"],
    ):
        assert _RFC3339.fullmatch(when), when
    assert not _EPOCH.search(shown.stdout)


def test_a_time_without_its_offset_is_refused_in_one_line(env):
    from undertow.worker.dev.sample import SampleStream

    env.register_reference(SampleStream(seed=1))
    for at in ("yesterday", "2026-12-06T03:04:05"):
        done = _cli("models", "history", "--model-id", "housing", "--at", at, "--db-url", env.db_url)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert f"argument --at: '{at}' is not an RFC 3339 time with its offset" in done.stderr


# --- no broker: one line within seconds, naming the address and `undertow broker` ---


def test_monitor_trainer_and_topics_stop_within_seconds_with_one_line_when_no_broker_listens(tmp_path):
    import time

    from undertow.worker.dev.broker import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there: connections are refused
    for command in (["monitor"], ["trainer"], ["topics", "create"]):
        db = tmp_path / f"{command[0]}.db"
        extra = [] if command[0] == "topics" else ["--db-url", f"sqlite:///{db}"]
        started = time.monotonic()
        done = _cli(*command, "--bootstrap-servers", address, *extra)
        elapsed = time.monotonic() - started
        assert done.returncode == 2 and elapsed < 10, (command, done.returncode, elapsed)
        (line,) = done.stderr.strip().splitlines()  # no kafka client lines, no traceback
        assert line.startswith(f"undertow: error: no Kafka broker reachable at {address}"), line
        assert "`undertow broker`" in line and "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS" in line, line
        assert not db.exists()  # refused before the database was created


def test_the_broker_probe_answers_for_a_listening_port_and_names_each_refusing_one():
    import socket

    from undertow.worker.cli.common import unreachable_broker
    from undertow.worker.dev.broker import free_port
    from undertow.worker.runtime.settings import Settings

    listening = socket.create_server(("127.0.0.1", 0))
    try:
        port = listening.getsockname()[1]
        closed = free_port()
        assert unreachable_broker(Settings(kafka_bootstrap_servers=f"127.0.0.1:{closed},127.0.0.1:{port}")) is None
        reason = unreachable_broker(Settings(kafka_bootstrap_servers=f"127.0.0.1:{closed},127.0.0.1:{closed}"))
        assert reason == f"127.0.0.1:{closed}: connection refused; 127.0.0.1:{closed}: connection refused"
    finally:
        listening.close()


def test_out_of_range_numbers_are_one_line_or_taken_as_all_never_a_traceback(env):
    from undertow.worker.dev.sample import SampleStream

    env.register_reference(SampleStream(seed=1))
    db = ["--db-url", env.db_url]
    huge = _cli("alerts", "--limit", "99999999999999999999", *db)  # more than any table holds: all of them
    assert (huge.returncode, huge.stdout.strip(), huge.stderr) == (
        0,
        "no alerts (none raised yet, or all older than UNDERTOW_RETAIN_ALERTS_SECONDS)",
        "",
    )
    for command in (
        ["topics", "create", "--partitions", "0"],
        ["monitor", "--partitions", "-3", *db],
        ["alerts", "--limit", "1.5", *db],
        ["monitor", "--metrics-port", "99999", *db],
        ["monitor", "--until-idle", "nan", *db],  # NaN compares false: it would have never been idle
        ["notify", "--until-idle", "-1", *db],
    ):
        done = _cli(*command)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (command, done.stderr)
        assert done.stderr.strip().splitlines()[-1].startswith("undertow"), (command, done.stderr)


def test_the_reports_times_are_readable_and_unambiguous_model_cards_included(env, tmp_path):
    """Times a person reads: RFC 3339 or day, month and year with an explicit UTC (the card's registered_at
    too, which is stored in epoch seconds); never a bare epoch number."""
    from undertow.worker.dev.sample import SampleStream

    env.register_reference(SampleStream(seed=1))  # its stored card says when, in epoch seconds
    done = _cli("report", "--model-id", "housing", "--out", str(tmp_path / "r.html"), "--db-url", env.db_url)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "r.html").read_text()
    when = r"\d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d(:\d\d)? UTC|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert re.search(r"Generated (" + when + ")", page)
    registered = re.search(r"<dt>registered</dt>\s*<dd>([^<]*)</dd>", page)
    assert registered and re.fullmatch(when, registered.group(1).strip()), registered
    assert not _EPOCH.search(page)


def test_a_commands_database_engine_is_disposed_when_the_command_fails(tmp_path, monkeypatch):
    """`with database(settings) as sessions:` disposes the engine however the block ends."""
    import pytest

    from undertow.errors import NotFound
    from undertow.storage import db
    from undertow.worker.cli.common import database
    from undertow.worker.runtime.settings import Settings

    engines = []
    make_engine = db.make_engine

    def recorded(*args, **kwargs):
        engines.append(make_engine(*args, **kwargs))
        return engines[-1]

    monkeypatch.setattr(db, "make_engine", recorded)
    disposed = []
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'undertow.db'}")
    with pytest.raises(NotFound):
        with database(settings) as sessions, sessions.begin():
            monkeypatch.setattr(engines[0], "dispose", lambda: disposed.append(True))
            raise NotFound("the command's own error")
    assert disposed == [True]


def test_a_mistyped_or_shortened_flag_is_named_by_its_commands_parser_with_the_closest_one():
    """A typo in a required flag was reported as the required flag missing, a shortened flag (`--js`) was
    silently taken for the one it begins, and an unknown flag drew the top-level usage."""
    from undertow.worker.cli import build_parser

    cases = {
        ("models", "register", "--referense", "r.csv", "--model-id", "x"): (
            "undertow models register: error: unrecognized argument: --referense (did you mean --reference?)"
        ),
        ("status", "--js"): "undertow status: error: unrecognized argument: --js (did you mean --json?)",
        ("alerts", "--limit=3", "--jsn"): "undertow alerts: error: unrecognized argument: --jsn (did you mean --json?)",
        ("status", "extra"): "undertow status: error: unrecognized arguments: extra",
    }
    for argv, line in cases.items():
        done = _cli(*argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.strip().splitlines()[-1] == line, (argv, done.stderr)
        assert done.stderr.startswith(f"usage: undertow {argv[0]}"), (argv, done.stderr)  # its own usage
    # The spelled-out flags still parse, before and after the subcommand's own.
    args = build_parser().parse_args(["--log-level", "debug", "alerts", "--limit=3", "--json", "--log-level", "info"])
    assert (args.limit, args.json, args.log_level) == (3, True, "INFO")
