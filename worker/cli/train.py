"""``undertow train``: version 1 of a model from a data file, with the default recipe, as champion."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from undertow.worker.cli.common import (
    add_connection_flags,
    add_metrics_flag,
    command,
    database,
    positive_int,
    require_broker,
    seconds,
    settings_from,
)
from undertow.worker.cli.drift_flags import add_drift_flags, drift_config_from


def cmd_train(args) -> int:
    from undertow.models import candidate, registry, runs, training
    from undertow.models.dataset import read_table
    from undertow.models.ids import check_id
    from undertow.models.profile import ProfileError, feature_kinds

    settings = settings_from(args)
    check_id(args.model_id, "--model-id")
    config = drift_config_from(args)
    if not 0 < args.holdout_fraction < 1:
        raise training.TrainingError("--holdout-fraction must lie between 0 and 1")
    try:
        columns = read_table(args.data)
    except ProfileError as exc:
        raise ProfileError(f"--data: {exc}") from None
    rows, targets, times = candidate.rows_from_table(columns, args.target, args.time_column)
    task = args.task or training.infer_task(targets)
    schema = feature_kinds({name: [row[name] for row in rows] for name in rows[0]})
    split = (
        training.split_by_time(times, args.holdout_fraction)
        if times is not None
        else training.split_at_random(len(rows), args.holdout_fraction)
    )
    built = candidate.build_version(training.default_pipeline(schema, task), rows, targets, schema, task, split)
    artifact = candidate.dump_model(built.model)
    data = {
        "rows": len(rows),
        "train_rows": int(split.train.size),
        "holdout_rows": int(split.holdout.size),
        "split": "newest rows held out" if times is not None else "random rows held out",
        "sha256": registry.sha256_file(Path(args.data)),
        "file": str(Path(args.data).resolve()),
    }
    card = {
        "model_details": {"algorithm": type(built.model.steps[-1][1]).__name__},
        "intended_use": {
            k: v for k, v in (("description", args.description), ("out_of_scope", args.out_of_scope)) if v
        },
        "caveats": args.caveat or [],
        "training_data": data,
        "evaluation": {"holdout": built.metrics},
    }
    try:
        with database(settings) as sessions, sessions.begin() as session:
            run = runs.new_run(
                session,
                run_id=f"run-{uuid.uuid4().hex[:16]}",
                model_id=args.model_id,
                champion_version=None,
                status=runs.RunStatus.RUNNING,
                trigger={"reason": "undertow train", "data": data["file"]},
            )
            row = registry.register(
                session,
                model_id=args.model_id,
                version=args.version,
                profile=built.profile,
                artifacts_dir=Path(settings.artifacts_dir),
                artifact=artifact,
                drift_config=config,
                baseline_error=built.baseline_error,
                error_sample=built.error_sample,
                data_sha256=data["sha256"],
                card=card,
                task=task,
                test_set=built.test_set,
                run_id=run.run_id,
                actor="operator",
                reason="trained by undertow train",
            )
            run.candidate_version = row.version
            runs.finish(
                run,
                runs.RunStatus.REGISTERED,
                f"version {row.version} registered as champion",
                params={"pipeline": "default recipe", "task": task, "holdout_fraction": args.holdout_fraction},
                metrics={"candidate": built.metrics},
                data=data,
                durations=built.durations,
            )
            summary = {
                "model_id": row.model_id,
                "version": row.version,
                "stage": row.stage,
                "task": task,
                "run_id": run.run_id,
                "artifact_sha256": row.artifact_sha256,
                "holdout": built.metrics,
                "baseline_error": built.baseline_error,
                "features": schema,
            }
            finished = runs.as_dict(run)
    finally:
        shutil.rmtree(artifact.parent, ignore_errors=True)
    runs.mirror_to_mlflow(settings.mlflow_tracking_uri, finished)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_trainer(args) -> int:
    from undertow.worker.cli.common import install_stop_handlers
    from undertow.worker.runtime.settings import TrainerSettings
    from undertow.worker.trainer.service import Trainer

    settings = settings_from(args, TrainerSettings)
    require_broker(settings)  # before the database is created or migrated
    trainer = Trainer(settings, partitions=args.partitions)
    install_stop_handlers(trainer.request_stop)
    return trainer.run(until_idle=args.until_idle)


def add_parsers(sub) -> None:
    p = command(
        sub,
        "train",
        "train version 1 of a model with the default recipe and register it as champion",
        "undertow train --model-id housing --data housing.csv --target price --time-column ts",
    )
    add_connection_flags(p, "db", "artifacts")
    p.add_argument("--model-id", required=True, help="the model's id, as the events will carry it")
    p.add_argument("--data", required=True, help="training data, CSV or Parquet, with the target column")
    p.add_argument("--target", required=True, help="the column to predict")
    p.add_argument(
        "--task",
        choices=("regression", "classification"),
        help="default: regression for numbers with more than 20 distinct values",
    )
    p.add_argument(
        "--time-column", help="hold out the newest rows by this column (numbers or RFC 3339); without it, random rows"
    )
    p.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.2,
        help="share of the rows held out to judge it (default: %(default)s)",
    )
    p.add_argument("--version", help="default: the next integer")
    p.add_argument("--description", help="intended use, for the model card")
    p.add_argument("--out-of-scope", help="uses it is not meant for, for the model card")
    p.add_argument("--caveat", action="append", help="a caveat for the model card (repeatable)")
    add_drift_flags(p)
    p.set_defaults(func=cmd_train)

    p = command(
        sub,
        "trainer",
        "run the trainer: answer retrain requests with gated candidates",
        "undertow trainer --bootstrap-servers 127.0.0.1:9092 --db-url sqlite:///undertow.db",
    )
    add_connection_flags(p, "kafka", "db", "artifacts", "topics", "group", service="trainer")
    add_metrics_flag(p)
    p.add_argument(
        "--until-idle",
        type=seconds,
        metavar="SECONDS",
        help="exit once no request came for this long and no run is pending (default: run until stopped)",
    )
    p.add_argument(
        "--partitions",
        type=positive_int,
        default=3,
        help="partitions of the topics it has to create (default: %(default)s)",
    )
    p.set_defaults(func=cmd_trainer)
