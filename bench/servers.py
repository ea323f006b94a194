"""Processes a bench starts for itself on loopback: a Redis of its own (password in a 0600
config file, never argv) and the API under uvicorn (its Redis URL in a 0600 env file), each
ended by its PID when the bench is done."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A redis-server of this bench's own; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; scripts/setup.sh installs it")
    port, password = free_port(), secrets.token_hex(12)
    config = workdir / "redis.conf"
    private(config, f'port {port}\nbind 127.0.0.1\nsave ""\ndir "{workdir}"\n'
                     f"user default on #{hashlib.sha256(password.encode()).hexdigest()} "
                     "~* &* +@all\n")
    proc = subprocess.Popen([binary, str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 10)
        yield f"redis://:{password}@127.0.0.1:{port}/0"
    finally:
        stop(proc)


@contextmanager
def api_server(workdir: Path, redis_url: str) -> Iterator[str]:
    """The API under uvicorn, its own process; its Redis URL in a 0600 env file."""
    env_file = workdir / "api.env"
    private(env_file, f"MOBILITY_REDIS_URL={redis_url}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILITY_")}
    env["MOBILITY_ENV_FILE"] = str(env_file)
    port = free_port()
    with (workdir / "api.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
             "--no-access-log"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
