"""Helper processes a bench runs inside a lab namespace and talks to, one JSON line at a time.

A helper (``bench.baselines``, ``bench.echo_meter``) runs as ``python -m MODULE`` under
``nsenter --net``, as the node agents run, so its traffic crosses the lab's links. It reads
commands on stdin and answers with one JSON object a line on stdout. A thread reads those
lines into a queue, so the bench waits for the next answer with a timeout (a line already read
ahead by a buffered pipe is never missed, as it could be with ``select`` on the pipe).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, cast

REPO = Path(__file__).resolve().parent.parent


class ChildError(RuntimeError):
    """A helper process said nothing in time, exited early, or failed."""


class Child:
    def __init__(self, namespace: str, module: str, *args: str) -> None:
        self.argv = ["nsenter", f"--net=/run/netns/{namespace}", sys.executable, "-m", module,
                     *args]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=str(REPO))
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"{module}-stdout", daemon=True).start()

    def _read(self) -> None:
        for line in cast(IO[str], self.proc.stdout):
            self.lines.put(line)
        self.lines.put(None)  # end of output

    def send(self, line: str) -> None:
        stdin = cast(IO[str], self.proc.stdin)
        stdin.write(line + "\n")
        stdin.flush()

    def close_stdin(self) -> None:
        cast(IO[str], self.proc.stdin).close()

    def next(self, timeout: float) -> dict[str, Any]:
        """The next JSON object the helper prints."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise ChildError(f"{self.argv[4:]} printed nothing in {timeout:g} s") from None
        if line is None:
            self.lines.put(None)
            code = self.proc.wait(5)
            raise ChildError(f"{self.argv[4:]} exited ({code}) before answering")
        data: dict[str, Any] = json.loads(line)
        return data

    def finish(self, timeout: float) -> dict[str, Any]:
        """The helper's last answer; fails unless it then exits 0."""
        data = self.next(timeout)
        code = self.proc.wait(timeout)
        if code != 0:
            raise ChildError(f"{self.argv[4:]} exited {code}")
        return data

    def kill(self) -> None:
        """End the helper if it still runs (by its own PID: it is this process's child)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
