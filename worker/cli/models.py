"""``undertow models``: register, list, show, promote, roll back, spread, the champion history, model cards."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from undertow.worker.cli.common import (
    add_connection_flags,
    add_json_flag,
    command,
    database,
    iso,
    rfc3339_time,
    settings_from,
    unreachable_broker,
)
from undertow.worker.cli.drift_flags import add_drift_flags, drift_config_from


def cmd_models_register(args) -> int:
    from undertow.models import registry
    from undertow.models.dataset import read_table
    from undertow.models.ids import check_id
    from undertow.models.profile import ProfileError
    from undertow.models.reference import load_reference

    settings = settings_from(args)
    # Everything the user typed is checked before anything is read or written.
    check_id(args.model_id, "--model-id")
    if args.version is not None:
        check_id(args.version, "--version")
    config = drift_config_from(args)
    try:
        columns = read_table(args.reference)
        _require_target(args, columns)
        model = _checked_artifact(Path(args.artifact), columns, args) if args.artifact else None
        task, why = _task(args.task, model, columns.get(args.target) if args.target else None)
        reference = load_reference(args.reference, args.target, args.prediction_column, task)
    except ProfileError as exc:
        raise ProfileError(f"--reference: {exc}") from None
    segments = _segments(args, columns, reference.profile, task)
    print(f"task: {task or 'unknown'} ({why})", file=sys.stderr)
    if reference.profile.rows < SMALL_REFERENCE_ROWS:
        print(_small_reference_warning(reference.profile.rows, config.window_size), file=sys.stderr)
    card = {"model_details": {"algorithm": _algorithm(model)}} if model is not None else {}
    if args.description:
        card["intended_use"] = {"description": args.description}
    with database(settings) as sessions, sessions.begin() as session:
        existed = bool(registry.registered(session, [args.model_id]))  # a switch warns; a new model has none
        row = registry.register(
            session,
            model_id=args.model_id,
            version=args.version,
            profile=reference.profile,
            artifacts_dir=Path(settings.artifacts_dir),
            artifact=Path(args.artifact) if args.artifact else None,
            drift_config=config,
            baseline_error=reference.baseline_error,
            error_sample=reference.error_sample,
            data_sha256=reference.data_sha256,
            test_set=reference.test_set,
            task=task,
            card=card or None,
            segments=segments,
        )
        # A model's setting, not a version's: without --spread a new version leaves it as it is.
        was_spread = _set_spread(session, row.model_id, True) if args.spread else None
        summary = {
            "model_id": row.model_id,
            "version": row.version,
            "stage": row.stage,
            "task": task,
            "features": json.loads(row.feature_schema),
            "artifact_sha256": row.artifact_sha256,
            "baseline_error_mean": row.baseline_error_mean,
            "baseline_error_std": row.baseline_error_std,
            "drift_config": config.model_dump(),
            "spread": bool(args.spread) or registry.is_spread(session, row.model_id),
        }
        if segments is not None:
            summary["segments"] = _shown_segments(segments)
    if was_spread is False and existed:  # a registered model switched on: the warning of `models spread --on`
        print(_SWITCH_WARNING[True], file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return 0


ARTIFACT_CHECK_ROWS = 100
# Below this many reference rows a window's PSI against the reference is mostly the reference's own
# sampling noise: about (bins - 1) * (1 / rows + 1 / window) by chance (0.069 at 150 rows and windows of
# 1,000, 0.018 at 1,000 rows; moderate drift is 0.1), so stable traffic raises input alerts.
SMALL_REFERENCE_ROWS = 1000


def _small_reference_warning(rows: int, window: int) -> str:
    from undertow.models.profile import DEFAULT_BINS

    chance = (DEFAULT_BINS - 1) * (1 / rows + 1 / window)
    return (
        f"warning: the reference has {rows:,} rows: a window of {window:,} predictions differs from so few by "
        f"chance (PSI {chance:.2g} on average, moderate drift at 0.1), so unchanged traffic can raise data-drift "
        f"alerts; register at least {SMALL_REFERENCE_ROWS:,} rows (5,000 or more recommended)"
    )


def _segments(args, columns: dict[str, list], profile, task: str | None):
    """The version's segments (models.segments) from --segment-by, or None; a bad column is refused in one
    line before anything is written."""
    if args.segment_by is None:
        if args.segments_top is not None:
            from undertow.models.segments import SegmentError

            raise SegmentError("--segments-top: only with --segment-by")
        return None
    from undertow.models.segments import DEFAULT_TOP, build_segmentation

    return build_segmentation(
        columns,
        [column.strip() for column in args.segment_by.split(",")],
        profile,
        top=DEFAULT_TOP if args.segments_top is None else args.segments_top,
        target=args.target,
        prediction=args.prediction_column,
        classes=task == "classification",
    )


def _checked_artifact(path: Path, columns: dict[str, list], args):
    """The artifact, loaded and made to predict on the first reference rows: a model that cannot is refused
    here, not found out by ``serve`` or the trainer later."""
    from undertow.models import registry, training
    from undertow.models.profile import build_profile

    model = registry.check_model_file(path)  # before the database is created or touched
    features = {
        k: v[:ARTIFACT_CHECK_ROWS] for k, v in columns.items() if k not in (args.target, args.prediction_column)
    }
    schema = {name: f.kind for name, f in build_profile(features).features.items()}
    rows = [{name: values[i] for name, values in features.items()} for i in range(len(next(iter(features.values()))))]
    try:
        model.predict(training.to_frame(rows, schema))
    except Exception as exc:  # noqa: BLE001 - the model's own failure on the reference rows
        raise registry.RegistryError(
            f"--artifact {path} cannot predict on the reference's rows ({type(exc).__name__}: {_first_line(exc)}); "
            f"its input columns must be the reference's features: {', '.join(schema)}"
        ) from None
    return model


_LOOKS_LIKE_AN_OUTPUT = re.compile(r"target|label|^y$|^y_|pred|score|proba|outcome|churn", re.IGNORECASE)


def _require_target(args, columns: dict[str, list]) -> None:
    """Without --target every column is profiled as an input feature, the target and the model's own
    prediction included, and concept drift is off: only --no-target says that is meant."""
    from undertow.errors import ConfigError

    suspects = [
        name
        for name in columns
        if _LOOKS_LIKE_AN_OUTPUT.search(name) and name not in (args.target, args.prediction_column)
    ]
    if args.target is not None and args.prediction_column is None:
        if suspects and not args.no_prediction_column:
            # Profiled as an input, a prediction column would also be a feature the producers never send.
            raise ConfigError(
                f"--prediction-column is missing and {', '.join(suspects)} look(s) like the model's "
                "predictions: name the column with --prediction-column (the baseline error and concept "
                "drift need it), or say --no-prediction-column to profile it as an input"
            )
        print(
            "warning: no --prediction-column: without the model's predictions on the reference there is "
            "no baseline error, and concept drift is off for this version",
            file=sys.stderr,
        )
    if args.target is not None or args.no_target:
        return
    hint = f" (columns that look like one: {', '.join(suspects)})" if suspects else ""
    raise ConfigError(
        f"--target is missing: name the target column{hint} and, for the baseline error, "
        "--prediction-column; or say --no-target to watch data drift only"
    )


def _task(given: str | None, model, targets: list | None) -> tuple[str | None, str]:
    """The version's task, and why: as given, from the artifact, or from the target's values."""
    from undertow.models.training import infer_task

    if given is not None:
        return given, "--task"
    if model is not None:
        if hasattr(model, "predict_proba") or hasattr(model, "classes_"):
            return "classification", "inferred: the artifact has predict_proba; --task overrides"
        return "regression", "inferred: the artifact has no predict_proba; --task overrides"
    known = [t for t in targets or [] if t is not None]
    if known:
        return infer_task(known), "inferred from the target's values; --task overrides"
    return None, "no artifact and no --target: give --task for concept drift on classes"


def _algorithm(model) -> str:
    """The estimator's class, the final step's for a pipeline (e.g. LogisticRegression)."""
    steps = getattr(model, "steps", None)
    final = steps[-1][1] if steps else model
    return type(final).__name__


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def cmd_models_list(args) -> int:
    from undertow.models import registry

    with database(settings_from(args), must_exist=True) as sessions, sessions.begin() as session:
        registry.require_registered(session, args.model_id)
        spread = registry.spread_models(session)
        rows = [
            {
                "model_id": r.model_id,
                "version": r.version,
                "stage": r.stage,
                "artifact_sha256": r.artifact_sha256,
                "registered_at": iso(r.created_at),
                "spread": r.model_id in spread,
            }
            for r in registry.list_versions(session, args.model_id)
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no model registered yet")
    for r in [] if args.json else rows:
        print("  ".join(f"{k}={_shown_value(v)}" for k, v in r.items()))
    return 0


def _shown_value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


# One line each, on stderr, when a model is switched: what happens to the events already on their way.
_SWITCH_WARNING = {
    True: "warning: labels of predictions sent before the switch (keyed by model id) may land on another "
    "partition than their prediction and expire unjoined (counted as expired): switch at a quiet time, the "
    "registry first, then your own producers (Client(spread=True)); `undertow serve` follows within "
    "UNDERTOW_REGISTRY_CHECK_SECONDS",
    False: "warning: the monitor now dead-letters events still keyed by event id (replayable from the .DLT "
    "topics): switch off at a quiet time, your own producers first (Client(spread=False)), then the registry; "
    "`undertow serve` follows within UNDERTOW_REGISTRY_CHECK_SECONDS",
}


def _set_spread(session, model_id: str, spread: bool) -> bool:
    """Set a registered model spread or not (NotFound, naming the registered ids, for any other); the setting
    it had."""
    from undertow.models import registry

    registry.require_registered(session, model_id)
    was = registry.is_spread(session, model_id)
    registry.set_spread(session, model_id, spread)
    return was


def cmd_models_spread(args) -> int:
    from undertow.models.ids import check_id

    check_id(args.model_id, "--model-id")
    with database(settings_from(args), must_exist=True) as sessions, sessions.begin() as session:
        was = _set_spread(session, args.model_id, args.spread)
    word = {True: "on", False: "off"}
    if was == args.spread:
        print(f"{args.model_id}: spread is already {word[was]}; nothing changed")
        return 0
    now = "its events are keyed by event id, over every partition" if args.spread else "keyed by model id again"
    print(f"{args.model_id}: spread {word[was]} -> {word[args.spread]} ({now})")
    print(_SWITCH_WARNING[args.spread], file=sys.stderr)
    return 0


def _shown_segments(segmentation) -> dict:
    """The segments of a version (models.segments) as register and show print them."""
    return {
        "by": segmentation.by,
        "top": segmentation.top,
        "segments": [
            {"segment": s.values, "reference_rows": s.rows, "watched": s.profile is not None}
            for s in segmentation.segments
        ],
    }


def cmd_models_show(args) -> int:
    from undertow.models import registry
    from undertow.models.segments import load_segmentation

    with database(settings_from(args), must_exist=True) as sessions, sessions.begin() as session:
        row = registry.get_version(session, args.model_id, args.version or _champion(session, args.model_id))
        shown = {
            "model_id": row.model_id,
            "version": row.version,
            "stage": row.stage,
            "task": row.task,
            "registered_at": iso(row.created_at),
            "artifact_path": row.artifact_path,
            "artifact_sha256": row.artifact_sha256,
            "data_sha256": row.data_sha256,
            "run_id": row.run_id,
            "features": json.loads(row.feature_schema),
            "baseline_error_mean": row.baseline_error_mean,
            "baseline_error_std": row.baseline_error_std,
            "drift_config": json.loads(row.drift_config),
            "test_set_rows": len(json.loads(row.test_set)["targets"]) if row.test_set else 0,
            "importance": json.loads(row.profile).get("importance"),  # shares of permutation importance
            "spread": registry.is_spread(session, row.model_id),  # the model's setting, not the version's
        }
        segmentation = load_segmentation(row.segments)
        if segmentation is not None:  # drift per segment: models register --segment-by
            shown["segments"] = _shown_segments(segmentation)
    print(json.dumps(shown, indent=2))
    return 0


def _champion(session, model_id: str) -> str:
    from undertow.errors import NotFound
    from undertow.models import registry

    registry.require_registered(session, model_id)  # "not registered", naming the ids that are, before "no champion"
    version = registry.champions(session, [model_id]).get(model_id)
    if version is None:
        raise NotFound(f"model {model_id!r} has no champion")
    return version


def _change(args, action: str) -> int:
    """Promote or roll back in one transaction with the model event in the outbox; then try to publish it."""
    settings = settings_from(args)
    with database(settings, must_exist=True) as sessions:
        with sessions.begin() as session:
            previous, version = _make_change(session, settings, args, action)
        published = _try_publish(settings, sessions)
    print(
        f"{args.model_id}: version {version} is champion ({action}; was {previous}); the event is "
        + ("published" if published else "in the outbox: a running service publishes it")
    )
    return 0


def _make_change(session, settings, args, action: str) -> tuple[str, str]:
    """The promotion or rollback, its model event in the outbox; (the previous champion, the new one)."""
    from undertow.models import registry
    from undertow.storage import repo
    from undertow.worker.runtime import cloudevents, output_events
    from undertow.worker.runtime.output_events import ModelChange, ModelPromoted
    from undertow.worker.runtime.signing import signed_headers
    from undertow.worker.runtime.topics import Topics

    previous = _champion(session, args.model_id)
    if action == "promoted":
        row = registry.promote(session, args.model_id, args.version, actor="operator", reason=args.reason)
    else:
        row = registry.rollback(session, args.model_id, actor="operator", reason=args.reason)
    (change,) = registry.history(session, args.model_id)[-1:]
    event = ModelPromoted(
        id=cloudevents.event_id(args.model_id, row.version, action, change.seq),
        subject=args.model_id,
        time=cloudevents.rfc3339(change.changed_at),
        data=ModelChange(
            model_id=args.model_id,
            model_version=row.version,
            previous_version=previous,
            action=action,
            actor="operator",
            reason=args.reason,
            request_id=None,
            run_id=None,
            gate=None,
        ),
    )
    value = output_events.encode(event)
    repo.enqueue(
        session,
        Topics(settings.topic_prefix).models,
        args.model_id.encode(),
        value,
        signed_headers(output_events.HEADERS, value, settings.signing_key),
    )
    return previous, row.version


def _try_publish(settings, sessions) -> bool:
    import logging

    from undertow.worker.runtime.transport import OutboxRelay, TransientError, make_producer

    if unreachable_broker(settings) is not None:
        return False  # in seconds, not after the client's own timeout
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)  # an unreachable broker is reported in one line below
    try:
        producer = make_producer(settings)
    except TransientError:
        return False
    finally:
        kafka_log.setLevel(level)
    try:
        OutboxRelay(sessions, producer).publish_pending()
        return True
    except TransientError:
        return False
    finally:
        producer.close(timeout=5)


def cmd_models_promote(args) -> int:
    return _change(args, "promoted")


def cmd_models_rollback(args) -> int:
    return _change(args, "rolled_back")


def cmd_models_history(args) -> int:
    from undertow.models import registry

    with database(settings_from(args), must_exist=True) as sessions, sessions.begin() as session:
        registry.require_registered(session, args.model_id)
        rows = [
            {
                "at": iso(c.changed_at),
                "version": c.version,
                "previous_version": c.previous_version,
                "action": c.action,
                "actor": c.actor,
                "reason": c.reason,
                "request_id": c.request_id,
                "run_id": c.run_id,
            }
            for c in registry.history(session, args.model_id)
        ]
        at = None
        if args.at:
            from undertow.worker.runtime.cloudevents import epoch

            at = registry.champion_at(session, args.model_id, epoch(args.at))
    if args.at:
        return _print_champion_at(args, at)
    if args.json:
        print(json.dumps(rows, indent=2))
    for r in [] if args.json else rows:
        was = f"(was {r['previous_version']})  " if r["previous_version"] is not None else ""
        print(
            f"{r['at']}  {r['action']:<11} {r['version']:<6} {was}by {r['actor']}: "
            f"{r['reason']}" + (f"  [request {r['request_id']}, {r['run_id']}]" if r["request_id"] else "")
        )
    return 0


def _print_champion_at(args, version: str | None) -> int:
    if args.json:
        print(json.dumps({"model_id": args.model_id, "at": args.at, "champion": version}, indent=2))
    else:
        print(version if version is not None else f"no champion at {args.at}")
    return 0 if version is not None else 1


def cmd_models_card(args) -> int:
    from undertow.errors import ConfigError
    from undertow.models import registry, runs
    from undertow.models.card import markdown, model_card

    args.model_id = args.model_id or args.legacy_model_id
    if not args.model_id:
        raise ConfigError("models card needs --model-id")
    with database(settings_from(args), must_exist=True) as sessions, sessions.begin() as session:
        row = registry.get_version(session, args.model_id, args.version or _champion(session, args.model_id))
        run = runs.find_run(session, row.run_id) if row.run_id else None
        card = model_card(row, run, registry.history(session, args.model_id))
    print(json.dumps(card, indent=2, default=str) if args.format == "json" else markdown(card), end="")
    return 0


def add_parsers(sub) -> None:
    p = command(
        sub,
        "models",
        "the model registry: register, list, show, promote, roll back, spread, history, cards",
        "undertow models list --model-id churn",
    )
    models_sub = p.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    _add_register(models_sub)
    p = command(models_sub, "list", "registered versions, oldest first", "undertow models list --model-id churn --json")
    add_connection_flags(p, "db")
    p.add_argument("--model-id", help="only this model (default: every model)")
    add_json_flag(p)
    p.set_defaults(func=cmd_models_list)
    p = command(
        models_sub,
        "show",
        "one version in full, as JSON (default: the champion)",
        "undertow models show --model-id churn --version 2",
    )
    add_connection_flags(p, "db")
    p.add_argument("--model-id", required=True)
    p.add_argument("--version", help="default: the champion")
    p.set_defaults(func=cmd_models_show)
    for name, text, example, func in (
        (
            "promote",
            "make a version the champion (recorded in the history)",
            'undertow models promote --model-id churn --version 3 --reason "validated offline"',
            cmd_models_promote,
        ),
        (
            "rollback",
            "restore the previous champion (recorded in the history)",
            'undertow models rollback --model-id churn --reason "complaints since 09:00"',
            cmd_models_rollback,
        ),
    ):
        p = command(models_sub, name, text, example)
        add_connection_flags(p, "db", "kafka", "topics")  # the model event is published, or left in the outbox
        p.add_argument("--model-id", required=True)
        if name == "promote":
            p.add_argument("--version", required=True)
        p.add_argument("--reason", required=True, help="why, for the history")
        p.set_defaults(func=func)
    _add_spread(models_sub)
    p = command(
        models_sub,
        "history",
        "every change of champion: when, which version, who, why",
        "undertow models history --model-id churn --at 2026-12-06T03:04:05Z",
    )
    add_connection_flags(p, "db")
    p.add_argument("--model-id", required=True)
    p.add_argument(
        "--at",
        metavar="TIME",
        type=rfc3339_time,
        help="only the version that was champion at this RFC 3339 time (e.g. 2026-12-06T03:04:05Z)",
    )
    add_json_flag(p, "JSON (an array; with --at, an object)")
    p.set_defaults(func=cmd_models_history)
    p = command(
        models_sub,
        "card",
        "the model card of a version (default: the champion)",
        "undertow models card --model-id churn --format json",
    )
    add_connection_flags(p, "db")
    # --model-id as everywhere else; the positional form of earlier releases still works.
    p.add_argument("--model-id", dest="model_id")
    p.add_argument("legacy_model_id", nargs="?", metavar="MODEL_ID", help=argparse.SUPPRESS)
    p.add_argument("--version", help="default: the champion")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown", help="default: %(default)s")
    p.set_defaults(func=cmd_models_card)


def _add_spread(models_sub) -> None:
    p = command(
        models_sub,
        "spread",
        "spread a model's events over every partition, keyed by event id (--on), or keep them on one (--off)",
        "undertow models spread --model-id clicks --on",
    )
    add_connection_flags(p, "db")
    p.add_argument("--model-id", required=True)
    switch = p.add_mutually_exclusive_group(required=True)
    switch.add_argument(
        "--on",
        dest="spread",
        action="store_const",
        const=True,
        help="spread: `undertow serve` keys its events by event id (give Client(spread=True) to your own producers)",
    )
    switch.add_argument("--off", dest="spread", action="store_const", const=False, help="one partition, by model id")
    p.set_defaults(func=cmd_models_spread)


def _add_register(models_sub) -> None:
    p = command(
        models_sub,
        "register",
        "register a model version as champion, with its reference profile",
        "undertow models register --model-id churn --reference train.csv --target churned "
        "--prediction-column predicted --artifact model.joblib",
    )
    add_connection_flags(p, "db", "artifacts")
    p.add_argument("--model-id", required=True, help="the model's id, as the events carry it")
    p.add_argument("--reference", required=True, help="reference (training) data, CSV or Parquet")
    p.add_argument(
        "--target", help="target column (excluded from features; with --prediction-column gives the baseline error)"
    )
    p.add_argument("--prediction-column", help="the model's predictions on the reference; profiled like a feature")
    p.add_argument(
        "--no-prediction-column",
        action="store_true",
        help="the reference has no predictions, even if a column looks like them: no baseline error, "
        "no concept drift (without it, a column named like a prediction is refused)",
    )
    p.add_argument(
        "--no-target",
        action="store_true",
        help="the reference has no target: data drift only (without it, a missing --target is refused)",
    )
    p.add_argument(
        "--artifact",
        help="model file copied into the artifact store, SHA-256 recorded; it must load "
        "and predict on the reference's rows",
    )
    p.add_argument(
        "--task",
        choices=("regression", "classification"),
        help="default: inferred from the artifact (predict_proba, classes_), else from the target's "
        "values; a classifier's 0/1 or boolean labels are classes",
    )
    p.add_argument("--version", help="default: the next integer")
    p.add_argument("--description", help="intended use, for the model card")
    p.add_argument(
        "--segment-by",
        metavar="COL[,COL]",
        help="categorical inputs to watch drift per segment on: the top segments of the reference by rows "
        "(--segments-top) plus __other__, each judged against its own reference rows (docs/data-drift.md)",
    )
    p.add_argument(
        "--segments-top",
        type=int,
        metavar="K",
        help="segments kept with --segment-by, most reference rows first (default 20); the rest are __other__",
    )
    p.add_argument(
        "--spread",
        action="store_true",
        help="key the model's events by event id, over every partition (a model too busy for one monitor; "
        "a setting of the model, kept by later versions: `undertow models spread` changes it)",
    )
    add_drift_flags(p)
    p.set_defaults(func=cmd_models_register)
