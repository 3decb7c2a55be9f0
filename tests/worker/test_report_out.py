"""``undertow report --out``: an earlier report is replaced, any other file only with ``--force``, a
directory or special file never; a missing folder is one line of error and exit code 2. The CLI as a
user runs it, on a real database."""

import hashlib
import os
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import REPO
from undertow.worker.dev.sample import SampleStream
from undertow.worker.report.build import GENERATOR_MARKER, ReportError, check_out

pytestmark = pytest.mark.postgres


def _report(env, out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "undertow.worker.cli",
            "--log-level",
            "WARNING",
            "report",
            "--model-id",
            "housing",
            *env.cli_args(),
            "--out",
            str(out),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2 and one line on stderr saying why."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("undertow: error: --out "), done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


@pytest.fixture
def registered(env):
    env.register_reference(SampleStream(seed=2), rows=1000)
    return env


@pytest.fixture
def folder(tmp_path):
    """An empty folder of the test's own (tmp_path also holds the SQLite database)."""
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


def test_a_report_is_marked_and_an_earlier_report_is_replaced_without_force(registered, folder):
    out = folder / "report.html"
    done = _report(registered, out)
    assert done.returncode == 0, done.stderr
    first = out.read_bytes()
    assert GENERATOR_MARKER in first[:4096] and b"Model <code>housing</code>" in first
    out.write_bytes(first.replace(b"</body>", b"<!-- the earlier one --></body>"))
    done = _report(registered, out)
    assert done.returncode == 0, done.stderr
    assert b"the earlier one" not in out.read_bytes() and GENERATOR_MARKER in out.read_bytes()
    # A report written before the marker existed is recognised by its title.
    out.write_text("<!DOCTYPE html>\n<html><head><title>Undertow report: housing</title></head></html>")
    assert _report(registered, out).returncode == 0 and GENERATOR_MARKER in out.read_bytes()
    assert [p.name for p in folder.iterdir()] == ["report.html"]  # no temporary file left behind


def test_a_database_or_other_file_at_out_is_kept_and_replaced_only_with_force(registered, folder):
    database = folder / "undertow.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE precious (x INTEGER)")
        conn.execute("INSERT INTO precious VALUES (42)")
    conn.close()
    page = folder / "index.html"
    page.write_text("<!DOCTYPE html><html><head><title>Our team page</title></head><body>hello</body></html>")
    for path in (database, page):
        before = _sha(path)
        _refused(_report(registered, path), "is not an Undertow report", "--force")
        assert _sha(path) == before
    done = _report(registered, database, "--force")
    assert done.returncode == 0, done.stderr
    assert GENERATOR_MARKER in database.read_bytes()


def test_a_missing_folder_is_one_line_and_exit_2_and_creates_nothing(registered, folder):
    out = folder / "no" / "such" / "report.html"
    for extra in ((), ("--force",)):
        _refused(_report(registered, out, *extra), "does not exist", str(folder / "no" / "such"))
    assert list(folder.iterdir()) == []


def test_a_directory_is_never_replaced_even_with_force(registered, folder):
    reports = folder / "reports"
    (reports / "keep").mkdir(parents=True)
    _refused(_report(registered, reports, "--force"), "is not a regular file")
    assert (reports / "keep").is_dir()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_being_read(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    # Reading a FIFO with no writer would block forever: the check must not open it.
    for force in (False, True):
        with pytest.raises(ReportError, match="is not a regular file"):
            check_out(fifo, force)
