"""``mobility logs``: the stack's log files, merged by time, a move's lines picked out, and
followed as they grow.

Every process of the embedded stack appends its output to ``<run dir>/logs/<role>.log``
(:class:`cli.stack.Stack`). Ours write JSON lines (:mod:`mobility.logs`), each with its time
and, on a move's lines, the move id; the others (Redis, containerd, uvicorn, a Celery banner)
write plain text. A plain line takes the time it states (Redis's and containerd's formats) or
else the time of the line before it in its file, so it stays where it was written. Filtering
by move keeps only JSON lines of that move (its ``move_id``, or its id in the message): a
plain line cannot be attributed to a move.

Following is ``tail -f`` over a directory: each file is read from where the last read ended,
a file that appears is read from its start, one that shrank or was replaced is read again
from its start, and a line is shown only once it is complete.
"""

from __future__ import annotations

import calendar
import contextlib
import heapq
import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from cli.output import err, out
from dataplane.lab import topology
from mobility.logs import is_move_id
from mobility.settings import get_settings

COMPONENT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
POLL_S = 0.2
FOLLOW_LINES = 10  # what ``--follow`` shows of the past, as ``tail -f`` does

# "1234:M 02 Dec 2026 11:34:55.123 * Ready to accept connections" (local time)
_REDIS_TS = re.compile(r"^\d+:[A-Z] (\d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2})(\.\d+)? ")
# 'time="2026-12-02T11:34:55.123456789Z" level=info msg=...' (containerd, logrus)
_LOGRUS_TS = re.compile(r'^time="(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})"')
_LEVEL_STYLE = {"debug": "dim", "info": "green", "warning": "yellow", "error": "bold red",
                "critical": "bold red reverse"}


class LogsError(RuntimeError):
    """The logs cannot be read (no such directory, a bad component name); says why."""


def plain_time(text: str) -> float | None:
    """The time a plain (non-JSON) line states, in the formats the stack's others write."""
    m = _REDIS_TS.match(text)
    if m:
        with contextlib.suppress(ValueError, OverflowError):
            base = time.mktime(time.strptime(m.group(1), "%d %b %Y %H:%M:%S"))
            return base + (float(m.group(2)) if m.group(2) else 0.0)
    m = _LOGRUS_TS.match(text)
    if m:
        with contextlib.suppress(ValueError):
            zone = "+00:00" if m.group(3) == "Z" else m.group(3)
            stamp = datetime.fromisoformat(m.group(1) + zone)
            return calendar.timegm(stamp.utctimetuple()) + (
                float(m.group(2)) if m.group(2) else 0.0)
    return None


@dataclass(frozen=True)
class Line:
    ts: float
    component: str
    text: str
    record: dict[str, Any] | None  # the JSON object, or None for a plain line

    @property
    def move_id(self) -> str | None:
        value = self.record.get("move_id") if self.record else None
        return value if isinstance(value, str) else None

    def of_move(self, move_id: str) -> bool:
        if self.record is None:
            return False
        return self.move_id == move_id or move_id in str(self.record.get("msg", ""))

    def as_json(self) -> dict[str, Any]:
        """The record as written, with its component; a plain line as ``msg``, ``raw``."""
        if self.record is not None:
            return {**self.record, "component": self.component}
        return {"ts": self.ts, "component": self.component, "msg": self.text, "raw": True}


def parse_line(component: str, text: str, *, last_ts: float) -> Line:
    record: dict[str, Any] | None = None
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            record = parsed
    ts: float | None = None
    if record is not None and isinstance(record.get("ts"), int | float):
        ts = float(record["ts"])
    elif record is None:
        ts = plain_time(text)
    return Line(ts=last_ts if ts is None else ts, component=component, text=text,
                record=record)


class FileReader:
    """One log file read in complete lines from ``offset``; ``offset`` moves past each line
    yielded, so a reader picks up exactly where the last one stopped."""

    def __init__(self, path: Path, *, offset: int = 0) -> None:
        self.path = path
        self.component = path.stem
        self.offset = offset
        self.last_ts = 0.0
        self.inode: int | None = None

    def lines(self, *, end: int | None = None) -> Iterator[Line]:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 (a generator holds it open)
        except FileNotFoundError:
            return
        with fh:
            st = self._stat(fh)
            if self.inode is not None and (st[0] != self.inode or st[1] < self.offset):
                self.offset, self.last_ts = 0, 0.0  # replaced or truncated: from its start
            self.inode = st[0]
            fh.seek(self.offset)
            for raw in fh:
                if not raw.endswith(b"\n") or (end is not None and self.offset + len(raw) > end):
                    return  # not complete yet (or past what the caller asked for)
                self.offset += len(raw)
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not text:
                    continue
                line = parse_line(self.component, text, last_ts=self.last_ts)
                self.last_ts = line.ts
                yield line

    @staticmethod
    def _stat(fh: Any) -> tuple[int, int]:
        st = os.fstat(fh.fileno())
        return st.st_ino, st.st_size


def check_component(name: str) -> str:
    if COMPONENT_RE.fullmatch(name) is None:
        raise LogsError(f"component {name!r}: a role name such as orchestrator, api, beat, "
                        "redis or agent-core-n1 (agent: every agent)")
    return name


def log_files(log_dir: Path, components: Iterable[str] = ()) -> list[Path]:
    """The ``*.log`` files of ``log_dir``, only the ``components`` named (a name matches its
    file and every ``<name>-...`` file: ``agent`` is every agent)."""
    wanted = [check_component(c) for c in components]
    if not log_dir.is_dir():
        raise LogsError(f"no log directory {log_dir}: is the stack up (mobility up), and is "
                        "MOBILITY_LAB_NAME the lab's name?")
    return sorted(p for p in log_dir.glob("*.log")
                  if not wanted or any(p.stem == c or p.stem.startswith(f"{c}-")
                                       for c in wanted))


def keep(line: Line, move_id: str | None) -> bool:
    return move_id is None or line.of_move(move_id)


def merged(readers: Iterable[FileReader], *, move_id: str | None = None,
           ends: dict[Path, int] | None = None) -> Iterator[Line]:
    """Every reader's lines (up to ``ends``), merged by time, only the move's if given."""
    streams = [(line for line in r.lines(end=(ends or {}).get(r.path)) if keep(line, move_id))
               for r in readers]
    return heapq.merge(*streams, key=lambda line: line.ts)


class Tail:
    """The files of a directory, followed: :meth:`poll` gives what was appended since."""

    def __init__(self, log_dir: Path, *, components: Iterable[str] = (),
                 move_id: str | None = None) -> None:
        self.log_dir = log_dir
        self.components = tuple(components)
        self.move_id = move_id
        self.readers: dict[Path, FileReader] = {}

    def history(self, *, last: int | None) -> list[Line]:
        """What the files hold now (the ``last`` lines of it, merged by time); following
        starts after it."""
        paths = log_files(self.log_dir, self.components)
        ends = {}
        for p in paths:
            self.readers[p] = FileReader(p)
            with contextlib.suppress(FileNotFoundError):
                ends[p] = p.stat().st_size
        lines = merged(self.readers.values(), move_id=self.move_id, ends=ends)
        return list(deque(lines, maxlen=last) if last is not None else lines)

    def poll(self) -> list[Line]:
        paths = set(log_files(self.log_dir, self.components))
        for gone in set(self.readers) - paths:
            del self.readers[gone]
        for p in sorted(paths - set(self.readers)):
            self.readers[p] = FileReader(p)  # a new file: from its start
        new = [line for r in self.readers.values() for line in r.lines()
               if keep(line, self.move_id)]
        return sorted(new, key=lambda line: line.ts)

    def follow(self, emit: Callable[[Line], None], *, stop: threading.Event,
               interval: float = POLL_S) -> None:
        while not stop.is_set():
            for line in self.poll():
                emit(line)
            stop.wait(interval)


def render(line: Line, *, width: int) -> Text:
    """``time component LEVEL [mv-...] logger: message`` (a plain line as it is)."""
    stamp = (time.strftime("%H:%M:%S", time.localtime(line.ts))
             + f".{int(line.ts * 1000) % 1000:03d}") if line.ts else "--:--:--.---"
    text = Text(no_wrap=False)
    text.append(stamp, style="dim")
    text.append(f" {line.component:<{width}} ", style="cyan")
    rec = line.record
    if rec is None:
        text.append(line.text, style="dim")
        return text
    level = str(rec.get("level", ""))
    text.append(f"{level.upper():<7} ", style=_LEVEL_STYLE.get(level, ""))
    if line.move_id:
        text.append(f"[{line.move_id}] ", style="magenta")
    text.append(f"{rec.get('logger', '')}: ", style="blue")
    text.append(str(rec.get("msg", "")))
    if rec.get("exc"):
        text.append("\n" + str(rec["exc"]), style="red")
    return text


class Printer:
    """Prints lines as JSON objects (one a line) or as rich text."""

    def __init__(self, console: Console, *, as_json: bool, width: int) -> None:
        self.console = console
        self.as_json = as_json
        self.width = width

    def __call__(self, line: Line) -> None:
        if self.as_json:
            self.console.file.write(json.dumps(line.as_json()) + "\n")
            self.console.file.flush()
        else:
            self.console.print(render(line, width=self.width), soft_wrap=True, highlight=False)


def show(log_dir: Path, *, console: Console, move_id: str | None = None,
         components: Iterable[str] = (), as_json: bool = False, follow: bool = False,
         lines: int | None = None, stop: threading.Event | None = None) -> int:
    """What ``mobility logs`` does; how many lines it printed before following."""
    if move_id is not None and not is_move_id(move_id):
        raise LogsError(f"{move_id!r} is not a move id (mv-<14 digits>-<6 hex digits>)")
    tail = Tail(log_dir, components=components, move_id=move_id)
    last = lines if lines is not None else (FOLLOW_LINES if follow else None)
    past = tail.history(last=last)
    width = max((len(p.stem) for p in tail.readers), default=8)
    printer = Printer(console, as_json=as_json, width=min(width, 24))
    for line in past:
        printer(line)
    if follow:
        tail.follow(printer, stop=stop or threading.Event())
    return len(past)


def log_dir() -> Path:
    """Where the stack of the lab the settings name writes its logs."""
    return topology.RUN_ROOT / get_settings().lab_name / "logs"


def _complete_component(incomplete: str) -> list[str]:
    """Shell completion of ``--component``: the roles that have a log now, and ``agent``."""
    try:
        stems = sorted({p.stem for p in log_dir().glob("*.log")})
    except OSError:
        return []
    names = stems + (["agent"] if any(s.startswith("agent-") for s in stems) else [])
    return [n for n in names if n.startswith(incomplete)]


def _move_option(value: str | None) -> str | None:
    if value is not None and not is_move_id(value):
        raise typer.BadParameter(f"{value!r} is not a move id (mv-<14 digits>-<6 hex digits>)")
    return value


def command(
    move: Annotated[str | None, typer.Option(
        "--move", callback=_move_option, help="only this move's lines (its JSON lines)")] = None,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="keep printing lines as they are written, until Ctrl-C")] = False,
    component: Annotated[list[str] | None, typer.Option(
        "--component", "-c", autocompletion=_complete_component,
        help="only this process's log (orchestrator, api, beat, redis, agent-core-n1; "
             "agent: every agent); repeatable")] = None,
    lines: Annotated[int | None, typer.Option(
        "--lines", "-n", min=1, help="only the last N lines (with --follow: 10)")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="one JSON object a line, as written, with its component")] = False,
) -> None:
    """The stack's logs, every process's merged by time; a move's lines with --move."""
    try:
        show(log_dir(), console=out, move_id=move, components=component or (),
             as_json=as_json, follow=follow, lines=lines)
    except LogsError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        return  # the end of --follow
    except BrokenPipeError:  # `mobility logs | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
