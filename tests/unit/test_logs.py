"""Logs: a move's id on each of its lines, and ``mobility logs`` over a stack's log files.

Aspects: the JSON formatter writes ``move_id`` only on a move's lines, the human one a
``[mv-...]`` tag; the filter stamps the bound move, an explicit one wins, nothing that is not a
move id is bound; binding is per thread and nests; a TTY gets human lines, a file JSON; Celery's
own signals (prerun/postrun, before_task_publish) bind a task's move from its arguments or its
header and put the header on tasks sent for a move; plain lines of Redis and containerd keep the
time they state, others the time of the line before; files merge by time; ``--move`` keeps only
that move's JSON lines, ``--component`` only those files; a partial line waits to be complete;
a truncated file is read again; following picks up appended lines and new files (in a thread
and through the real ``mobility logs --follow`` in a subprocess); the CLI's errors (no log
directory, a bad move id, a bad component) are messages with an exit code, not tracebacks;
``moves``' table and ``status``' processes from a run directory; shell completion is on
and completes ``--component`` from the log files.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

import pytest
from celery import Celery
from celery.signals import before_task_publish, task_postrun, task_prerun
from rich.console import Console

from cli import logs as cli_logs
from cli import views
from dataplane.lab import topology
from mobility import logs

MOVE = "mv-20261202113000-a1b2c3"
OTHER = "mv-20261202113001-d4e5f6"
MOBILITY = str(Path(sys.executable).parent / "mobility")
T0 = 1_795_000_000.0  # a fixed epoch second for the sample files


def _record(msg: str = "hello", **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("mobility.test", logging.INFO, __file__, 1, msg, None, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def _emit(handler: logging.Handler, record: logging.LogRecord) -> None:
    if handler.filter(record):
        handler.emit(record)


def test_json_lines_carry_the_bound_move_id_and_only_then() -> None:
    buf = io.StringIO()
    handler = logs.make_handler(buf)
    with logs.move_context(MOVE):
        _emit(handler, _record("in the move"))
    _emit(handler, _record("outside"))
    first, second = (json.loads(line) for line in buf.getvalue().splitlines())
    assert first["move_id"] == MOVE and first["msg"] == "in the move"
    assert "move_id" not in second and second["msg"] == "outside"
    assert {"ts", "time", "level", "logger", "pid"} <= set(first)


def test_human_lines_tag_the_move() -> None:
    fmt = logs.HumanFormatter()
    rec = _record("placed")
    logs.MoveFilter().filter(rec)
    assert "[mv-" not in fmt.format(rec)
    with logs.move_context(MOVE):
        rec = _record("placed")
        logs.MoveFilter().filter(rec)
    line = fmt.format(rec)
    assert f"[{MOVE}] mobility.test: placed" in line and " INFO " in line


def test_a_tty_gets_human_lines_a_file_json() -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert isinstance(logs.make_handler(tty).formatter, logs.HumanFormatter)
    finally:
        os.close(master)
        os.close(slave)
    assert isinstance(logs.make_handler(io.StringIO()).formatter, logs.JsonFormatter)
    handler = logs.make_handler(io.StringIO())
    assert any(isinstance(f, logs.MoveFilter) for f in handler.filters)


def test_explicit_move_id_wins_and_junk_is_never_bound() -> None:
    rec = _record(move_id=OTHER)
    with logs.move_context(MOVE):
        logs.MoveFilter().filter(rec)
    assert getattr(rec, "move_id", None) == OTHER
    with logs.move_context("mv-../../etc"):
        assert logs.current_move() is None
    assert not logs.is_move_id("mv-2026-x") and logs.is_move_id(MOVE)


def test_binding_nests_and_is_per_thread() -> None:
    seen: dict[str, str | None] = {}
    inside = threading.Event()
    release = threading.Event()

    def other() -> None:
        with logs.move_context(OTHER):
            inside.set()
            release.wait(5)
            seen["other"] = logs.current_move()

    with logs.move_context(MOVE):
        t = threading.Thread(target=other)
        t.start()
        assert inside.wait(5)
        seen["main"] = logs.current_move()  # the other thread's binding is not ours
        with logs.move_context(OTHER):
            seen["nested"] = logs.current_move()
        seen["after"] = logs.current_move()
        release.set()
        t.join(5)
    assert seen == {"main": MOVE, "other": OTHER, "nested": OTHER, "after": MOVE}
    assert logs.current_move() is None


@pytest.fixture
def celery_app() -> Iterator[Celery]:
    import workers.app  # noqa: F401  (connects the signal handlers)

    app = Celery("test-logs", set_as_current=False)
    yield app


def test_celery_signals_bind_a_task_move(celery_app: Celery) -> None:
    @celery_app.task(name="t.phase")  # type: ignore[untyped-decorator]
    def phase(move_id: str, epoch: int) -> None: ...

    task_prerun.send(sender=phase, task_id="t1", task=phase, args=(MOVE, 0), kwargs={})
    try:
        assert logs.current_move() == MOVE
    finally:
        task_postrun.send(sender=phase, task_id="t1", task=phase, args=(MOVE, 0), kwargs={})
    assert logs.current_move() is None
    # a node operation: its move only in the header (an attribute of the request)
    phase.push_request(move_id=OTHER)
    try:
        task_prerun.send(sender=phase, task_id="t2", task=phase, args=({"pod": "p"},),
                         kwargs={})
        assert logs.current_move() == OTHER
        task_postrun.send(sender=phase, task_id="t2", task=phase)
    finally:
        phase.pop_request()
    task_prerun.send(sender=phase, task_id="t3", task=phase, args=("not-a-move",), kwargs={})
    assert logs.current_move() is None
    task_postrun.send(sender=phase, task_id="t3", task=phase)


def test_tasks_sent_for_a_move_carry_it_in_a_header() -> None:
    import workers.app  # noqa: F401

    headers: dict[str, object] = {"task": "node.switch"}
    before_task_publish.send(sender="node.switch", body=(), headers=headers)
    assert "move_id" not in headers
    with logs.move_context(MOVE):
        before_task_publish.send(sender="node.switch", body=(), headers=headers)
    assert headers["move_id"] == MOVE


# --- mobility logs ---

def _json(ts: float, msg: str, *, move: str | None = None, level: str = "info",
          logger: str = "mobility.moving") -> str:
    rec: dict[str, object] = {"ts": ts, "level": level, "logger": logger, "msg": msg,
                              "pid": 1}
    if move:
        rec["move_id"] = move
    return json.dumps(rec)


def _redis_line(ts: float, msg: str) -> str:
    stamp = time.strftime("%d %b %Y %H:%M:%S", time.localtime(ts))
    return f"4242:M {stamp}.250 * {msg}"


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    d = tmp_path / "logs"
    d.mkdir()
    (d / "orchestrator.log").write_text("\n".join([
        " -------------- celery@orchestrator v5 (banner, plain)",
        _json(T0 + 1, "admit done", move=MOVE),
        _json(T0 + 4, "cutover done", move=MOVE),
        _json(T0 + 5, f"move {OTHER}: place failed", level="error"),
        _json(T0 + 6, "reaped nothing", logger="workers.moves"),
    ]) + "\n")
    (d / "agent-core-n1.log").write_text("\n".join([
        _json(T0 + 2, "node.create_pod done for pod p1", move=MOVE, logger="workers.node"),
        "plain agent line without a time",
        _json(T0 + 3, "node.switch done for pod p2", move=OTHER, logger="workers.node"),
    ]) + "\n")
    (d / "redis.log").write_text(_redis_line(T0 + 2.5, "Ready to accept connections") + "\n")
    (d / "containerd.log").write_text(
        'time="' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(T0 + 3.5))
        + '.123456789Z" level=info msg="serving..."\n')
    (d / "api.log").write_text("INFO:     Started server process [77]\n")
    (d / "notes.txt").write_text("not a log\n")
    return d


def _show(log_dir: Path, **kw: object) -> list[str]:
    buf = io.StringIO()
    console = Console(file=buf, width=200, color_system=None)
    cli_logs.show(log_dir, console=console, **kw)  # type: ignore[arg-type]
    return buf.getvalue().splitlines()


def test_plain_lines_keep_the_time_they_state() -> None:
    assert cli_logs.plain_time(_redis_line(T0, "x")) == pytest.approx(T0 + 0.25)
    logrus = 'time="2026-12-02T11:34:55.5Z" level=info msg=x'
    assert cli_logs.plain_time(logrus) == pytest.approx(
        1_796_211_295.5)  # 2026-12-02T11:34:55.5 UTC
    assert cli_logs.plain_time("INFO:     Started server process") is None
    line = cli_logs.parse_line("api", "INFO: x", last_ts=12.0)
    assert line.ts == 12.0 and line.record is None


def test_files_merge_by_time(log_dir: Path) -> None:
    rows = [json.loads(x) for x in _show(log_dir, as_json=True)]
    assert [r["component"] for r in rows] == [
        "api", "orchestrator", "orchestrator", "agent-core-n1", "agent-core-n1", "redis",
        "agent-core-n1", "containerd", "orchestrator", "orchestrator", "orchestrator"]
    times = [r["ts"] for r in rows]
    assert times == sorted(times)
    raw = [r for r in rows if r.get("raw")]
    assert {r["component"] for r in raw} == {"api", "orchestrator", "agent-core-n1", "redis",
                                             "containerd"}
    assert "not a log" not in json.dumps(rows)


def test_a_move_filter_keeps_only_its_json_lines(log_dir: Path) -> None:
    rows = [json.loads(x) for x in _show(log_dir, as_json=True, move_id=MOVE)]
    assert [r["msg"] for r in rows] == ["admit done", "node.create_pod done for pod p1",
                                        "cutover done"]
    assert all(r["move_id"] == MOVE for r in rows)
    assert {r["component"] for r in rows} == {"orchestrator", "agent-core-n1"}
    other = [json.loads(x) for x in _show(log_dir, as_json=True, move_id=OTHER)]
    assert [r["msg"] for r in other] == ["node.switch done for pod p2",
                                         f"move {OTHER}: place failed"]  # the id in its text
    with pytest.raises(cli_logs.LogsError):
        _show(log_dir, move_id="mv-1")


def test_components_and_last_lines(log_dir: Path) -> None:
    rows = [json.loads(x) for x in _show(log_dir, as_json=True, components=["agent"])]
    assert {r["component"] for r in rows} == {"agent-core-n1"} and len(rows) == 3
    rows = [json.loads(x) for x in _show(log_dir, as_json=True, components=["redis", "api"])]
    assert {r["component"] for r in rows} == {"redis", "api"}
    rows = [json.loads(x) for x in _show(log_dir, as_json=True, lines=2)]
    assert [r["msg"] for r in rows] == [f"move {OTHER}: place failed", "reaped nothing"]
    with pytest.raises(cli_logs.LogsError, match="role name"):
        _show(log_dir, components=["../etc"])
    with pytest.raises(cli_logs.LogsError, match="no log directory"):
        _show(log_dir / "missing")


def test_human_lines(log_dir: Path) -> None:
    text = _show(log_dir, move_id=MOVE)
    assert len(text) == 3
    assert all(f"[{MOVE}]" in line for line in text)
    assert "orchestrator" in text[0] and "INFO" in text[0] and "admit done" in text[0]
    everything = _show(log_dir)
    assert any(line.endswith("INFO:     Started server process [77]") for line in everything)
    assert any("--:--:--.---" in line for line in everything)  # api's: no time known yet


def test_a_partial_line_waits_and_a_truncated_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "beat.log"
    path.write_text(_json(T0, "one") + "\n" + '{"ts": 17')
    reader = cli_logs.FileReader(path)
    assert [line.record["msg"] for line in reader.lines() if line.record] == ["one"]
    with path.open("a") as fh:
        fh.write('95000001, "msg": "two", "level": "info", "logger": "x"}\n')
    assert [line.record["msg"] for line in reader.lines() if line.record] == ["two"]
    assert list(reader.lines()) == []
    path.write_text(_json(T0, "after truncation") + "\n")
    assert [line.record["msg"] for line in reader.lines() if line.record] == [
        "after truncation"]


def _wait_for(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


class _Lines(io.TextIOBase):
    """A console's file that many threads may read while one writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._text = ""

    def write(self, s: str) -> int:
        with self._lock:
            self._text += s
        return len(s)

    def rows(self) -> list[dict[str, object]]:
        with self._lock:
            return [json.loads(x) for x in self._text.splitlines()]


def test_follow_picks_up_appended_lines_and_new_files(log_dir: Path) -> None:
    sink = _Lines()
    console = Console(file=cast(IO[str], sink), width=200, color_system=None)
    stop = threading.Event()
    t = threading.Thread(target=cli_logs.show, args=(log_dir,), daemon=True,
                         kwargs={"console": console, "as_json": True, "follow": True,
                                 "move_id": MOVE, "stop": stop})
    t.start()
    try:
        assert _wait_for(lambda: len(sink.rows()) == 3)  # the past: the move's three lines
        with (log_dir / "orchestrator.log").open("a") as fh:
            fh.write(_json(time.time(), "release done", move=MOVE) + "\n")
            fh.write(_json(time.time(), "not this move's", move=OTHER) + "\n")
            fh.flush()
        (log_dir / "agent-edge-n1.log").write_text(
            _json(time.time(), "node.delete_pod done", move=MOVE) + "\n")
        assert _wait_for(lambda: len(sink.rows()) == 5), sink.rows()
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    rows = sink.rows()
    assert {r["msg"] for r in rows[3:]} == {"release done", "node.delete_pod done"}
    assert all(r["move_id"] == MOVE for r in rows)


def _cli_env(run_root: Path, lab: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILITY_")}
    env.update(MOBILITY_RUN_ROOT=str(run_root), MOBILITY_LAB_NAME=lab,
               MOBILITY_ENV_FILE=os.devnull, PYTHONUNBUFFERED="1")
    return env


def test_the_cli_follows_like_tail_f(tmp_path: Path, log_dir: Path) -> None:
    lab_dir = tmp_path / "root" / "smtlog"
    lab_dir.mkdir(parents=True)
    log_dir.rename(lab_dir / "logs")
    logs_dir = lab_dir / "logs"
    errors = tmp_path / "stderr"
    got: list[dict[str, object]] = []
    with errors.open("w") as stderr, subprocess.Popen(
            [MOBILITY, "logs", "--follow", "--json", "--move", MOVE],
            env=_cli_env(tmp_path / "root", "smtlog"), stdout=subprocess.PIPE, stderr=stderr,
            text=True) as proc:

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                got.append(json.loads(line))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert _wait_for(lambda: len(got) == 3), errors.read_text()
            with (logs_dir / "agent-core-n1.log").open("a") as fh:
                fh.write(_json(time.time(), "node.resume done", move=MOVE) + "\n")
            assert _wait_for(lambda: len(got) == 4), errors.read_text()
            assert got[-1]["msg"] == "node.resume done"
            assert got[-1]["component"] == "agent-core-n1"
            assert proc.poll() is None  # still following
        finally:
            proc.terminate()
            proc.wait(10)
            reader.join(5)


def test_cli_errors_are_messages(tmp_path: Path) -> None:
    env = _cli_env(tmp_path, "smtnone")
    r = subprocess.run([MOBILITY, "logs"], env=env, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 1 and "no log directory" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([MOBILITY, "logs", "--move", "mv-x"], env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 2 and "not a move id" in r.stderr
    (tmp_path / "smtnone" / "logs").mkdir(parents=True)
    r = subprocess.run([MOBILITY, "logs", "--component", "a/b"], env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 1 and "role name" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([MOBILITY, "moves", "--watch", "--json"], env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 2


# --- mobility moves / status ---

def test_moves_table() -> None:
    moves = [{"id": MOVE, "service": "echo", "from_cluster": "core", "to_cluster": "edge",
              "status": "succeeded", "phase": None, "total_ms": 1234.5, "freeze_ms": 12.3,
              "created_at": T0},
             {"id": OTHER, "service": "sess", "from_cluster": "edge", "to_cluster": "core",
              "status": "running", "phase": "sync", "total_ms": None, "freeze_ms": None,
              "created_at": T0}]
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(views.moves_table(moves))
    text = buf.getvalue()
    assert MOVE in text and "core→edge" in text and "1,234" in text and "12" in text
    assert OTHER in text and "sync" in text and "running" in text


def test_status_processes_from_a_run_dir(tmp_path: Path) -> None:
    done = subprocess.Popen(["true"])
    done.wait(10)
    topology.record_process(tmp_path, "orchestrator", os.getpid())
    pids = tmp_path / "pids"
    (pids / "beat.json").write_text(json.dumps({"pid": done.pid, "start": 1}))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "orchestrator.log").write_text("x\n")
    procs = {p["role"]: p for p in views.processes(tmp_path)}
    assert procs["orchestrator"]["alive"] is True and procs["orchestrator"]["pid"] == os.getpid()
    assert procs["orchestrator"]["log"] == str(tmp_path / "logs" / "orchestrator.log")
    assert procs["beat"]["alive"] is False and procs["beat"]["pid"] is None
    assert procs["beat"]["recorded_pid"] == done.pid and procs["beat"]["log"] is None
    assert list(procs) == ["orchestrator", "beat"]  # in the stack's order


def test_shell_completion_is_on_and_completes_components(tmp_path: Path) -> None:
    r = subprocess.run([MOBILITY, "--show-completion", "bash"], env=_cli_env(tmp_path, "smtc"),
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and "_MOBILITY_COMPLETE" in r.stdout, r.stderr
    logs_dir = tmp_path / "smtc" / "logs"
    logs_dir.mkdir(parents=True)
    for role in ("orchestrator", "agent-core-n1", "api", "beat"):
        (logs_dir / f"{role}.log").write_text("")
    env = dict(_cli_env(tmp_path, "smtc"), _MOBILITY_COMPLETE="complete_bash",
               COMP_WORDS="mobility logs --component a", COMP_CWORD="3")
    r = subprocess.run([MOBILITY], env=env, capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["agent-core-n1", "api", "agent"]
    env.update(COMP_WORDS="mobility mo", COMP_CWORD="1")
    r = subprocess.run([MOBILITY], env=env, capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.stdout.split() == ["move", "moves"]
