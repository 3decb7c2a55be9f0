"""The README's own-model walkthrough ("Monitor your own model") runs as written, end to end (issue 30): from a
scikit-learn LogisticRegression on 0/1 labels, saved with joblib and registered, through the embedded broker, a
monitor and undertow.client, to a concept-drift alert and a report.

Which blocks: every fenced code block that follows a line ``<!-- walkthrough -->`` in README.md (an HTML comment:
invisible on GitHub), in the order they appear; they must lie in the "Monitor your own model" section. Unmarked
blocks are illustrations and are not run.

How they run, as a reader would run them in an empty project folder:

- every block runs in one temporary folder (so the default ``./undertow.db`` and ``./artifacts`` land there),
  with the test's environment minus any ``UNDERTOW_*`` variable, plus ``UNDERTOW_KAFKA_BOOTSTRAP_SERVERS`` naming
  the walkthrough's broker (the README says the client and the services read it) and the venv's ``bin`` first on
  ``PATH``;
- a ``python`` block is written to a file and run with the venv's python;
- an ``sh`` block is one command per line (bash: ``\\`` continues a line, ``#`` starts a comment); each must exit 0;
- the long-running commands, recognised by their command, are started in the background with their output in a
  file: ``undertow broker`` (given ``--port``, the free port the environment names, since the default 9092 may be
  taken on a shared machine; ready once it prints its bootstrap address) and ``undertow monitor`` (ready once the
  input topics it creates at start-up exist); both are stopped with SIGTERM at the end, as Ctrl-C does, and the
  monitor must exit 0;
- after a python block, while a monitor runs, the test waits until the monitor has consumed everything on its
  input topics (``undertow status --json``: lag 0 on every input partition), as the reader looks at ``status``
  once it is done. Every wait polls a condition with a deadline.

Then the acceptance of issue 30: the model card says ``classification`` and ``LogisticRegression``; the log loss
and the estimated accuracy are on (a concept alert on the ``log_loss`` metric besides the ``misclassification``
one; ``estimated_accuracy`` in ``status --json``); ``report.html`` is an Undertow report.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_for
from undertow.worker.dev.broker import free_port
from undertow.worker.runtime.settings import load_settings
from undertow.worker.runtime.topics import Topics
from undertow.worker.runtime.transport import make_admin

MARKER = "<!-- walkthrough -->"
SECTION = "## Monitor your own model"
BLOCK = re.compile(r"^" + re.escape(MARKER) + r"\s*\n```(\w+)\s*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
LONG_RUNNING = (("undertow", "broker"), ("undertow", "monitor"))
STEP_TIMEOUT = 300  # seconds for one command or block: a hung step fails instead of hanging the suite
READY_TIMEOUT = 120


@dataclass
class Block:
    language: str
    code: str
    line: int


def walkthrough_blocks(readme: str) -> list[Block]:
    """The marked blocks, in order; each must be inside the "Monitor your own model" section."""
    start = readme.index(SECTION)
    following = readme.find("\n## ", start + len(SECTION))
    end = len(readme) if following < 0 else following
    blocks = []
    for match in BLOCK.finditer(readme):
        line = readme.count("\n", 0, match.start()) + 1
        assert start < match.start() < end, f"README.md:{line}: a walkthrough block outside '{SECTION}'"
        blocks.append(Block(match.group(1), match.group(2), line))
    assert readme.count(MARKER) == len(blocks), "a walkthrough marker not followed by a fenced block"
    return blocks


def commands(sh: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", sh)
    return [line.strip() for line in joined.split("\n") if line.strip() and not line.strip().startswith("#")]


@dataclass
class Walkthrough:
    folder: Path
    env: dict
    bootstrap: str
    outputs: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)
    background: dict[str, subprocess.Popen] = field(default_factory=dict)

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def run(self, command: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            ["bash", "-c", command], cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=STEP_TIMEOUT
        )
        assert done.returncode == 0, (
            f"{command!r} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
        self.outputs[command] = done
        return done

    def start(self, argv: list[str]) -> None:
        name = argv[1]
        if name == "broker" and "--port" not in argv:
            argv = [*argv, "--port", self.bootstrap.rsplit(":", 1)[1]]
        executable = shutil.which(argv[0], path=self.env["PATH"])
        assert executable, f"{argv[0]} is not on the venv's PATH"
        with open(self.folder / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(
                [executable, *argv[1:]], cwd=self.folder, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.background[name] = proc

        def alive() -> None:
            assert proc.poll() is None, f"undertow {name} exited with {proc.returncode}:\n{self.log(name)}"

        if name == "broker":

            def ready():
                alive()
                return f"bootstrap servers: {self.bootstrap}" in self.log(name)
        else:

            def ready():
                alive()
                return self.input_topics_exist()

        try:
            wait_for(ready, READY_TIMEOUT, f"undertow {name} to be ready", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log(name)}") from None

    def input_topics_exist(self) -> bool:
        admin = make_admin(load_settings({"kafka_bootstrap_servers": self.bootstrap}))
        try:
            topics = Topics("undertow.")
            return {topics.predictions, topics.labels} <= set(admin.list_topics())
        finally:
            admin.close()

    def status(self) -> dict:
        return json.loads(self.run("undertow status --json").stdout)

    def wait_for_the_monitor(self) -> None:
        """Until the monitor has consumed (and committed) every record of its input topics."""
        monitor = self.background["monitor"]
        inputs = {"undertow.predictions", "undertow.labels"}

        def caught_up():
            assert monitor.poll() is None, f"the monitor exited with {monitor.returncode}:\n{self.log('monitor')}"
            partitions = [p for p in self.status()["partitions"] if p["topic"] in inputs]
            written = sum(p["end_offset"] or 0 for p in partitions)
            return written > 0 and all(p["lag"] == 0 for p in partitions)

        try:
            wait_for(caught_up, READY_TIMEOUT, "the monitor to consume every prediction and label", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log('monitor')}") from None

    def stop(self, name: str) -> int:
        proc = self.background.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # what Ctrl-C asks for: finish the batch, commit, exit
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"undertow {name} did not stop on SIGTERM:\n{self.log(name)}") from None
        return proc.returncode

    def close(self) -> None:
        for proc in self.background.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def walkthrough(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    venv_bin = Path(sys.executable).parent  # the venv's bin, not resolved: its python is the venv's
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNDERTOW_")}
    bootstrap = f"127.0.0.1:{free_port()}"
    env.update({"UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"})
    world = Walkthrough(folder, env, bootstrap)
    yield world
    world.close()


def test_the_readmes_own_model_walkthrough_runs_from_a_logistic_regression_to_a_concept_alert_and_a_report(walkthrough):
    blocks = walkthrough_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert {b.language for b in blocks} == {"python", "sh"}, [b.language for b in blocks]
    ran: list[str] = []
    for i, block in enumerate(blocks):
        if block.language == "python":
            script = walkthrough.folder / f"walkthrough_{i}.py"
            script.write_text(block.code)
            done = subprocess.run(
                [sys.executable, script.name],
                cwd=walkthrough.folder,
                env=walkthrough.env,
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT,
            )
            assert done.returncode == 0, f"README.md:{block.line}: the python block failed:\n{done.stderr[-3000:]}"
            if "monitor" in walkthrough.background:
                walkthrough.wait_for_the_monitor()
            continue
        assert block.language == "sh", f"README.md:{block.line}: a walkthrough block in {block.language}"
        for command in commands(block.code):
            argv = shlex.split(command, comments=True)
            if tuple(argv[:2]) in LONG_RUNNING:
                walkthrough.start(argv)
            else:
                walkthrough.run(command)
            ran.append(" ".join(argv[:3]))
    for needed in (
        "undertow models register",
        "undertow broker",
        "undertow monitor",
        "undertow status",
        "undertow alerts --model-id",
        "undertow report --model-id",
    ):
        assert any(r.startswith(needed) for r in ran), f"the walkthrough no longer runs {needed!r}: {ran}"

    # The card says classification and names the algorithm.
    register = next(
        out for command, out in walkthrough.outputs.items() if command.startswith("undertow models register")
    )
    assert "task: classification" in register.stderr, register.stderr
    card = next(out for command, out in walkthrough.outputs.items() if command.startswith("undertow models card"))
    assert "**task**: classification" in card.stdout and "**algorithm**: LogisticRegression" in card.stdout, card.stdout

    # A concept alert, on the 0/1 error and on the log loss of the scores; the accuracy estimated from the scores.
    alerts = json.loads(walkthrough.run("undertow alerts --model-id churn --json").stdout)
    concept = [a["data"] for a in alerts if a["type"] == "undertow.drift.concept"]
    assert {"misclassification", "log_loss"} <= {d["metric"] for d in concept}, alerts
    assert all(d["model_id"] == "churn" and d["episode"] == "started" for d in concept), concept
    listed = next(out for command, out in walkthrough.outputs.items() if command.startswith("undertow alerts"))
    assert "undertow.drift.concept" in listed.stdout, listed.stdout
    assert "on misclassification" in listed.stdout and "on log_loss" in listed.stdout, listed.stdout
    status = walkthrough.status()
    (checks,) = [c for c in status["data_checks"] if c["model_id"] == "churn"]
    assert 0.5 < checks["estimated_accuracy"]["value"] <= 1, checks
    (churn,) = [m for m in status["models"] if m["model_id"] == "churn"]
    assert churn["predictions"] == churn["labels"] > 0, churn
    assert any(c["model_id"] == "churn" and c["in_episode"] for c in status["concept"]), status["concept"]

    # The report.
    report = walkthrough.folder / "report.html"
    assert '<meta name="generator" content="undertow report">' in report.read_text(encoding="utf-8")

    # Ctrl-C: the monitor finishes its batch and exits 0; then the broker.
    assert walkthrough.stop("monitor") == 0, walkthrough.log("monitor")
    walkthrough.stop("broker")
