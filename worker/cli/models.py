"""``undertow models``: register a version with its reference profile and drift rules, list versions."""
from __future__ import annotations

import json
from pathlib import Path

from worker.cli.common import add_connection_flags, iso, open_sessions, settings_from
from worker.cli.drift_flags import add_drift_flags, drift_config_from


def cmd_models_register(args) -> int:
    from models import registry
    from models.ids import check_id
    from models.profile import ProfileError
    from models.reference import load_reference
    settings = settings_from(args)
    # Everything the user typed is checked before anything is read or written.
    check_id(args.model_id, "--model-id")
    if args.version is not None:
        check_id(args.version, "--version")
    config = drift_config_from(args)
    try:
        reference = load_reference(args.reference, args.target, args.prediction_column)
    except ProfileError as exc:
        raise ProfileError(f"--reference: {exc}") from None
    if args.artifact:
        registry.check_model_file(Path(args.artifact))  # before the database is created or touched
    engine, sessions = open_sessions(settings)
    with sessions.begin() as session:
        row = registry.register(
            session, model_id=args.model_id, version=args.version, profile=reference.profile,
            artifacts_dir=Path(settings.artifacts_dir), artifact=Path(args.artifact) if args.artifact else None,
            drift_config=config, baseline_error=reference.baseline_error, error_sample=reference.error_sample,
            data_sha256=reference.data_sha256,
            card={"intended_use": {"description": args.description}} if args.description else None)
        summary = {"model_id": row.model_id, "version": row.version, "stage": row.stage,
                   "features": json.loads(row.feature_schema), "artifact_sha256": row.artifact_sha256,
                   "baseline_error": reference.baseline_error, "drift_config": config.model_dump()}
    engine.dispose()
    print(json.dumps(summary, indent=2))
    return 0


def cmd_models_list(args) -> int:
    from models import registry
    engine, sessions = open_sessions(settings_from(args), must_exist=True)
    with sessions.begin() as session:
        rows = [{"model_id": r.model_id, "version": r.version, "stage": r.stage,
                 "artifact_sha256": r.artifact_sha256, "registered_at": iso(r.created_at)}
                for r in registry.list_versions(session, args.model_id)]
    engine.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
    for r in [] if args.json else rows:
        print("  ".join(f"{k}={v}" for k, v in r.items()))
    return 0

def add_parsers(sub) -> None:
    p = sub.add_parser("models", help="the model registry")
    models_sub = p.add_subparsers(dest="models_command", required=True)
    p = models_sub.add_parser("register", help="register a model version as champion, with its reference profile")
    add_connection_flags(p)
    p.add_argument("--model-id", required=True)
    p.add_argument("--reference", required=True, help="reference (training) data, CSV or Parquet")
    p.add_argument("--target", help="target column (excluded from features; with --prediction-column gives "
                                    "the baseline error)")
    p.add_argument("--prediction-column", help="the model's predictions on the reference; profiled like a feature")
    p.add_argument("--artifact", help="model file copied into the artifact store, SHA-256 recorded")
    p.add_argument("--version", help="default: the next integer")
    p.add_argument("--description", help="intended use, for the model card")
    add_drift_flags(p)
    p.set_defaults(func=cmd_models_register)
    p = models_sub.add_parser("list", help="registered versions")
    add_connection_flags(p)
    p.add_argument("--model-id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
