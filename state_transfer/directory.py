"""Directory mode: ship a directory of files, for applications that keep state in files.

Keys are paths relative to the root. A version is a scan: ``changes_since(v)`` rescans and
returns the files whose size or modification time changed since the scan numbered ``v`` (all
files for ``v == 0``), and the files that disappeared. The application must stop writing while
frozen: ``freeze`` calls its ``on_freeze`` hook and waits for it to return.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

Stamp = tuple[int, int]  # (mtime_ns, size)


class DirectoryState:
    def __init__(self, root: str | Path, *, on_freeze: Callable[[], None] | None = None,
                 on_resume: Callable[[], None] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._on_freeze = on_freeze
        self._on_resume = on_resume
        self._scans: dict[int, dict[str, Stamp]] = {0: {}}
        self._version = 0
        self._frozen = False
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        return self._version

    @property
    def frozen(self) -> bool:
        return self._frozen

    def _scan(self) -> dict[str, Stamp]:
        out = {}
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                path = Path(dirpath) / name
                st = path.stat()
                out[str(path.relative_to(self.root))] = (st.st_mtime_ns, st.st_size)
        return out

    def freeze(self) -> int:
        if self._on_freeze is not None:
            self._on_freeze()
        self._frozen = True
        return self._version

    def resume(self) -> None:
        self._frozen = False
        if self._on_resume is not None:
            self._on_resume()

    def changes_since(self, version: int) -> tuple[int, list[str], list[str]]:
        with self._lock:
            base = self._scans.get(version, {})
            now = self._scan()
            self._version += 1
            # keep only the newest scans: a round always asks for the one before it
            self._scans = {v: s for v, s in self._scans.items() if v >= self._version - 2}
            self._scans[self._version] = now
            written = [k for k, stamp in now.items() if base.get(k) != stamp]
            deleted = [k for k in base if k not in now]
            return self._version, written, deleted

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"key {key!r} leaves the state directory")
        return path

    def encode(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def decode_apply(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.restoring")
        tmp.write_bytes(data)
        tmp.replace(path)

    def apply_delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def digest(self, prefix: str = "") -> str:
        h = hashlib.sha256()
        for key in sorted(k for k in self._scan() if k.startswith(prefix)):
            raw_key, data = key.encode(), self._path(key).read_bytes()
            h.update(len(raw_key).to_bytes(8, "big") + raw_key)
            h.update(len(data).to_bytes(8, "big") + data)
        return h.hexdigest()

    def count(self) -> int:
        return len(self._scan())
