"""The embedded stack's supervisor: restarts a crashed process with backoff, and records it.

``python -m cli.supervise RUN_DIR`` runs beside the stack's processes (the stack starts it
last). Every process the stack starts leaves a spec (argv, environment, working directory,
log) in ``RUN_DIR/specs/<role>.json`` (0600: the environment holds credentials); a role whose
recorded process is gone is started again, after 0.5 s, 1 s, 2 s... (at most 30 s) when it
keeps dying, and ``RUN_DIR/supervise/state.json`` counts its restarts for ``mobility status``.
A role stopped on purpose (``Stack.stop_process``) has its spec removed first, so it stays
stopped. Starting a process takes ``RUN_DIR/spawn.lock``, so the supervisor and a person's
``mobility up`` never start the same role twice.

The supervisor ends when its run directory goes (the lab is down) or on SIGTERM; ``mobility
lab down`` stops it before anything else, so nothing is restarted during a teardown.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dataplane.lab import topology

log = logging.getLogger("cli.supervise")

POLL_S = 0.5
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0  # a process that ran this long restarts without backoff when it dies


@contextlib.contextmanager
def spawn_lock(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "spawn.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_spec(run_dir: Path, role: str, *, argv: list[str], env: dict[str, str],
               cwd: str, log_path: Path) -> None:
    d = run_dir / "specs"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{role}.json"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"argv": argv, "env": env, "cwd": cwd, "log": str(log_path)}, fh)
    os.replace(tmp, d / f"{role}.json")


def drop_spec(run_dir: Path, role: str) -> None:
    (run_dir / "specs" / f"{role}.json").unlink(missing_ok=True)


def spawn(run_dir: Path, role: str, *, argv: list[str], env: dict[str, str], cwd: str,
          log_path: Path) -> tuple[int, subprocess.Popen[bytes] | None]:
    """Start ``role`` unless its recorded process runs; its PID and, when started here, the
    process handle (the caller reaps it)."""
    with spawn_lock(run_dir):
        pid = topology.recorded_pid(run_dir, role)
        if pid is not None:
            return pid, None
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
        topology.record_process(run_dir, role, proc.pid)
        return proc.pid, proc


def read_state(run_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        return dict(json.loads((run_dir / "supervise" / "state.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def _write_state(run_dir: Path, state: dict[str, dict[str, Any]]) -> None:
    d = run_dir / "supervise"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / ".state.json"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, d / "state.json")


class Supervisor:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.state = read_state(run_dir)
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.seen: dict[str, tuple[int | None, float]] = {}  # role -> (pid, since when seen alive)
        self.not_before: dict[str, float] = {}
        self.stop = False

    def tick(self) -> None:
        for pid, proc in list(self.children.items()):
            if proc.poll() is not None:
                del self.children[pid]
        specs = self.run_dir / "specs"
        for path in sorted(specs.glob("*.json")) if specs.is_dir() else []:
            role = path.stem
            alive = topology.recorded_pid(self.run_dir, role)
            now = time.monotonic()
            if alive is not None:
                if self.seen.get(role, (None, 0.0))[0] != alive:
                    self.seen[role] = (alive, now)
                continue
            if now < self.not_before.get(role, 0.0):
                continue
            self._restart(role, path, now)

    def _restart(self, role: str, path: Path, now: float) -> None:
        try:
            spec = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return  # dropped on purpose meanwhile
        entry = self.state.setdefault(role, {"restarts": 0, "last_restart": None})
        last_pid, since = self.seen.get(role, (None, now))
        ran_for = now - since
        streak = int(entry.get("streak", 0))
        streak = 0 if ran_for >= STABLE_S else streak + 1
        pid, proc = spawn(self.run_dir, role, argv=list(spec["argv"]), env=dict(spec["env"]),
                          cwd=str(spec["cwd"]), log_path=Path(spec["log"]))
        if proc is None:
            return  # someone else started it first
        self.children[pid] = proc
        entry.update(restarts=int(entry.get("restarts", 0)) + 1, last_restart=time.time(),
                     streak=streak, pid=pid, previous_pid=last_pid)
        _write_state(self.run_dir, self.state)
        self.seen[role] = (pid, now)
        self.not_before[role] = now + min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** streak)
        log.warning("%s died; restarted as pid %s (restart %s)", role, pid, entry["restarts"])

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        log.info("supervising %s", self.run_dir)
        while not self.stop and self.run_dir.is_dir():
            try:
                self.tick()
            except Exception:  # the supervisor must outlive any one bad pass
                log.exception("supervision pass failed")
            time.sleep(POLL_S)
        return 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if len(sys.argv) != 2:
        print("usage: python -m cli.supervise RUN_DIR", file=sys.stderr)
        return 2
    return Supervisor(Path(sys.argv[1])).run()


if __name__ == "__main__":
    sys.exit(main())
