"""``undertow demo``: embedded broker, a registered reference, a drifting stream, the monitor, what it found."""
from __future__ import annotations

import tempfile
from pathlib import Path

from worker.cli.common import install_stop_handlers, settings_from
from worker.runtime.settings import MonitorSettings


def cmd_demo(args) -> int:
    """Broker, topics, a registered reference, a drifting sample stream, the monitor drained, then status."""
    from kafka import KafkaProducer

    from worker.cli import build_parser, main  # the demo runs the real commands
    from worker.dev.broker import EmbeddedBroker
    from worker.dev.sample import SampleStream, encode, write_reference_csv
    from worker.monitor.service import Monitor
    from worker.runtime.topics import Topics, ensure_topics
    from worker.runtime.transport import make_admin
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="undertow-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker() as broker:
        common = ["--bootstrap-servers", broker.bootstrap_servers, "--db-url", f"sqlite:///{workdir / 'undertow.db'}",
                  "--artifacts-dir", str(workdir / "artifacts")]
        settings = settings_from(build_parser().parse_args(["status", *common]), MonitorSettings)
        print(f"embedded broker on {broker.bootstrap_servers}; state in {workdir / 'undertow.db'}")
        stream = SampleStream(seed=7)
        write_reference_csv(stream, workdir / "reference.csv")
        main(["models", "register", *common, "--model-id", "housing", "--reference", str(workdir / "reference.csv"),
              "--target", "target", "--prediction-column", "prediction"])
        topics = Topics(settings.topic_prefix)
        admin = make_admin(settings)
        ensure_topics(admin, topics, 3)
        admin.close()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5, enable_idempotence=False)
        quarter = args.events // 4
        pairs = [*stream.events(2 * quarter), *stream.events(quarter, start_index=2 * quarter, shift=1.5),
                 *stream.events(args.events - 3 * quarter, start_index=3 * quarter, shift=1.5, concept_shift=1.0)]
        for i, (prediction, _) in enumerate(pairs):
            key = prediction["model_id"].encode()
            producer.send(topics.predictions, key=key, value=encode(prediction))
            if i >= 500:  # labels arrive 500 predictions late
                producer.send(topics.labels, key=key, value=encode(pairs[i - 500][1]))
        for _, label in pairs[-500:]:
            producer.send(topics.labels, key=b"housing", value=encode(label))
        producer.send(topics.predictions, key=b"housing", value=b"{not json")
        producer.flush()
        producer.close()
        print(f"produced {args.events} predictions (x0 shifted by 1.5 sd after {2 * quarter}; labels off by 1.0 "
              f"after {3 * quarter}), their labels 500 predictions late, and 1 malformed record")
        monitor = Monitor(settings, partitions=3)
        install_stop_handlers(monitor.request_stop)
        code = monitor.run(until_idle=3.0)
        print()
        main(["status", *common])
        print("\nalerts:")
        main(["alerts", *common])
        print("\nretrain requests:")
        main(["retrain", "list", *common])
    return code


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="run everything end to end on the embedded defaults")
    p.add_argument("--events", type=int, default=8000)
    p.add_argument("--workdir", help="where the SQLite file goes (default: a new temporary folder)")
    p.set_defaults(func=cmd_demo)
