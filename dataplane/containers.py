"""A typed adapter around the lab's own containerd, driven through ``ctr``.

Why ``ctr`` and not the gRPC API: containerd's Go client is the only complete one, and ``ctr``
is that client with a command line; a Python gRPC stack would add generated stubs and a
dependency for the dozen calls the lab makes. Every call is ``ctr --address A --namespace N
...`` with a timeout; any failure is a :class:`~dataplane.errors.DataplaneError` carrying
ctr's stderr (``errno`` ENOENT for "not found", EEXIST for "already exists", ``retryable`` when
the daemon did not answer or the call timed out).

Each lab runs its OWN containerd (:class:`ContainerdPaths`): root, state, sockets and runc's
state under the lab's run directory, so two labs (or a lab and the host's containerd) never
share a socket, a snapshot or a runc state file. Containers live in the containerd namespace
named after the lab; ctr puts a container's cgroup at ``/<namespace>/<id>`` in every
hierarchy, which is how :func:`cleanup` finds what is left after a crash.

Layering (kopf style): this module knows containerd and /proc; it knows nothing of pods or
moves. The node agent builds :class:`ContainerRun` values and calls :meth:`Containerd.run`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_codes
import hashlib
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataplane import images as oci
from dataplane.errors import DataplaneError, NamespaceNotFound
from dataplane.images import ImageConfig, docker_import_name

__all__ = [
    "ContainerRun",
    "Containerd",
    "ContainerdPaths",
    "ImageConfig",
    "ImageInfo",
    "Mount",
    "cgroup_dirs",
    "cleanup",
    "docker_import_name",
    "find_daemon",
    "shim_socket",
    "shims_of",
]

log = logging.getLogger(__name__)

# containerd's own rule for namespace names (namespaces/validate.go in containerd 1.6).
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
# Container ids: containerd accepts the same grammar (identifiers.Validate), at most 76 chars.
ID_RE = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
ID_MAX = 76
SNAPSHOTTER = "overlayfs"
# Where the runc v2 shim puts its sockets: containerd 1.6 hard-codes /run/containerd/s (the
# name is sha256("<address>/<namespace>/<id>"), so labs never collide there).
SHIM_SOCKET_DIR = Path("/run/containerd/s")
DEFAULT_RUNC_ROOT = Path("/run/containerd/runc")  # the runc v2 shim's default --root
SHIM_PREFIX = "containerd-shim"
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with its NUL

# Plugins the lab never uses. The CRI plugin is by far the slowest to load (and would open a
# streaming port); the other snapshotters probe the file system (aufs runs modprobe, btrfs and
# zfs stat their roots, devmapper logs an error); "opt" would share /opt/containerd between
# labs. Not the old runtime v1 (io.containerd.runtime.v1.linux): in 1.6 the tasks service
# requires it, and without it every task call is "not implemented".
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
DISABLED_PLUGINS = (
    CRI_PLUGIN,
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.native",
    "io.containerd.internal.v1.opt",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)

_UNPACKED = re.compile(r"^unpacking (\S+) \((sha256:[0-9a-f]{64})\)\.\.\.", re.MULTILINE)
_MNT_DETACH = 2


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


@dataclass(frozen=True)
class CriConfig:
    """The CRI plugin of a containerd that a kubelet drives (a real Kubernetes node).

    ``restrict_oom_score_adj``: this kind of machine forbids a negative ``oom_score_adj``, and
    without it runc fails every pod sandbox ("can't get final child's PID from pipe: EOF").
    The pods' network namespaces are mounted under this daemon's state directory, not as
    ``/run/netns/cni-*`` beside everyone's (``netns_mounts_under_state_dir``), so what a node
    made is found, and removed, by its path alone.
    The streaming server (exec, logs) listens on the node namespace's loopback only; CNI's
    binaries and configuration are the node's own; no registry is configured, so an image is
    only ever one imported locally (pods use ``imagePullPolicy: Never``).
    """

    sandbox_image: str
    cni_bin_dir: Path
    cni_conf_dir: Path

    def toml(self, paths: ContainerdPaths) -> str:
        cri = f'[plugins."{CRI_PLUGIN}"]'
        return (
            f"\n{cri}\n"
            f"  sandbox_image = {_toml_str(self.sandbox_image)}\n"
            "  restrict_oom_score_adj = true\n"
            "  disable_apparmor = true\n"
            "  enable_selinux = false\n"
            '  stream_server_address = "127.0.0.1"\n'
            '  stream_server_port = "0"\n'
            "  disable_tcp_service = true\n"
            "  netns_mounts_under_state_dir = true\n"
            "  max_concurrent_downloads = 1\n\n"
            f"{cri[:-1]}.cni]\n"
            f"  bin_dir = {_toml_str(str(self.cni_bin_dir))}\n"
            f"  conf_dir = {_toml_str(str(self.cni_conf_dir))}\n"
            "  max_conf_num = 1\n\n"
            f"{cri[:-1]}.containerd]\n"
            f"  snapshotter = {_toml_str(SNAPSHOTTER)}\n"
            '  default_runtime_name = "runc"\n\n'
            f"{cri[:-1]}.containerd.runtimes.runc]\n"
            '  runtime_type = "io.containerd.runc.v2"\n\n'
            f"{cri[:-1]}.containerd.runtimes.runc.options]\n"
            "  SystemdCgroup = false\n"
            f"  Root = {_toml_str(str(paths.runc_root))}\n"
        )


@dataclass(frozen=True)
class ContainerdPaths:
    """Where one lab's containerd keeps everything: all of it under ``run_dir/containerd``."""

    run_dir: Path

    @property
    def base(self) -> Path:
        return self.run_dir / "containerd"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def address(self) -> Path:
        return self.base / "containerd.sock"

    @property
    def ttrpc_address(self) -> Path:
        return self.base / "containerd.sock.ttrpc"

    @property
    def runc_root(self) -> Path:
        """runc's state (``--runc-root``); its default, /run/containerd/runc, is shared."""
        return self.base / "runc"

    @property
    def config(self) -> Path:
        return self.base / "config.toml"

    @property
    def log(self) -> Path:
        return self.base / "containerd.log"

    def write_config(self, cri: CriConfig | None = None) -> Path:
        """Write the daemon's config (v2 format) and return its path.

        Root, state, the gRPC and ttrpc sockets are this run dir's; the debug and metrics
        endpoints are off; the plugins of :data:`DISABLED_PLUGINS` are not loaded, overlayfs is
        the only snapshotter. So two labs' daemons run side by side, and beside the host's.
        With ``cri`` the CRI plugin is loaded (a kubelet's runtime, see :class:`CriConfig`).
        """
        for sock in (self.address, self.ttrpc_address):
            if len(os.fsencode(str(sock))) > UNIX_PATH_MAX:
                raise ValueError(f"socket path {sock} is longer than {UNIX_PATH_MAX} bytes; "
                                 "use a shorter run directory")
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        disabled = ", ".join(_toml_str(p) for p in DISABLED_PLUGINS
                             if cri is None or p != CRI_PLUGIN)
        text = (
            "# Written by dataplane.containers.ContainerdPaths.write_config: this lab's own\n"
            "# containerd; nothing here is shared with the host's or another lab's.\n"
            "version = 2\n"
            f"root = {_toml_str(str(self.root))}\n"
            f"state = {_toml_str(str(self.state))}\n"
            f"disabled_plugins = [{disabled}]\n"
            "oom_score = 0\n\n"
            "[grpc]\n"
            f"  address = {_toml_str(str(self.address))}\n"
            "  uid = 0\n  gid = 0\n\n"
            "[ttrpc]\n"
            f"  address = {_toml_str(str(self.ttrpc_address))}\n\n"
            "[debug]\n"
            '  address = ""\n'
            '  level = "warn"\n\n'
            "[metrics]\n"
            '  address = ""\n\n'
            '[plugins."io.containerd.snapshotter.v1.overlayfs"]\n'
            '  root_path = ""\n'
        ) + (cri.toml(self) if cri is not None else "")
        tmp = self.config.with_suffix(".toml.tmp")
        tmp.write_text(text)
        tmp.replace(self.config)
        return self.config

    def argv(self) -> list[str]:
        """The daemon's command line (run it as root; its stderr is its log)."""
        return ["containerd", "--config", str(self.config)]

    def client(self, namespace: str, **kwargs: Any) -> Containerd:
        """A :class:`Containerd` for this daemon and ``namespace``, with runc's state here."""
        return Containerd(str(self.address), namespace, runc_root=str(self.runc_root), **kwargs)


@dataclass(frozen=True)
class Mount:
    """A bind mount of host path ``src`` at ``dst`` in the container."""

    src: Path | str
    dst: str
    readonly: bool = True


@dataclass(frozen=True)
class ContainerRun:
    """Everything :meth:`Containerd.run` needs to start one container.

    ``argv``: the whole command line (the image's entry point is not used); ``None``: the
    image's own entry point and command, with ``args`` (if any) in place of the command, as
    ``docker run IMAGE ARGS...`` does. ``env`` is added to the image's environment through a
    0600 file in ``files_dir``, never on a command line. ``netns`` is a network namespace path
    (``/var/run/netns/<name>``) the container joins. ``log_path`` receives stdout and stderr.
    """

    id: str
    image: str
    netns: str
    log_path: Path
    files_dir: Path
    argv: tuple[str, ...] | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    cpus: float | None = None
    memory_bytes: int | None = None
    cwd: str | None = None


@dataclass(frozen=True)
class ImageInfo:
    """An image in the store: its name, manifest (or index) digest and size in bytes (the
    manifest, config and layers of its linux/amd64 image, as ``ctr images ls`` counts)."""

    name: str
    digest: str
    size: int


def _check_namespace(namespace: str) -> str:
    if not NAMESPACE_RE.match(namespace) or len(namespace) > 76:
        raise ValueError(f"bad containerd namespace {namespace!r}: letters and digits with "
                         "'.', '_' or '-' between them, at most 76 characters")
    return namespace


def _check_id(cid: str) -> str:
    if not ID_RE.match(cid) or len(cid) > ID_MAX:
        raise ValueError(f"bad container id {cid!r}: letters and digits with '.', '_' or '-' "
                         f"between them, at most {ID_MAX} characters")
    return cid


def _classify(stderr: str) -> tuple[int | None, bool]:
    """(errno, retryable) for a ctr failure, from its message."""
    low = stderr.lower()
    if "not found" in low:
        return errno_codes.ENOENT, False
    if "already exists" in low:
        return errno_codes.EEXIST, False
    if any(s in low for s in ("failed to dial", "connection refused", "deadline exceeded",
                              "transport is closing", "unavailable")):
        return errno_codes.ECONNREFUSED, True
    return None, False


class Containerd:
    """One containerd namespace, through ``ctr``: images, containers and their tasks.

    ``runc_root`` is passed to every ``ctr run`` so runc's state stays under the lab's run
    directory (:meth:`ContainerdPaths.client` sets it). ``connect_timeout`` bounds how long a
    call waits for a daemon that is not there (ctr's own default is 10 s).
    """

    def __init__(self, address: str | os.PathLike[str], namespace: str, *, ctr: str = "ctr",
                 timeout: float = 60, runc_root: str | os.PathLike[str] | None = None,
                 connect_timeout: float = 2.0) -> None:
        self.address = os.fspath(address)
        self.namespace = _check_namespace(namespace)
        self.ctr = ctr
        self.timeout = timeout
        self.runc_root = None if runc_root is None else os.fspath(runc_root)
        self.connect_timeout = connect_timeout
        # Image name -> (manifest digest, config): what run(args=...) needs to build a command
        # line. Dropped on import and remove; a digest never changes content.
        self._configs: dict[str, tuple[str, ImageConfig]] = {}
        self._sizes: dict[str, int] = {}

    # -- plumbing -------------------------------------------------------------------------

    def _ctr(self, *args: str, timeout: float | None = None,
             what: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [self.ctr, "--address", self.address, "--namespace", self.namespace,
                "--connect-timeout", f"{self.connect_timeout}s", *args]
        log.debug("ctr %s", " ".join(args))
        limit = self.timeout if timeout is None else timeout
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit,
                                  check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise DataplaneError(f"{what or 'ctr ' + args[0]}: no answer from containerd at "
                                 f"{self.address} within {limit:g} s",
                                 errno=errno_codes.ETIMEDOUT, retryable=True) from e
        except FileNotFoundError as e:
            raise DataplaneError(f"ctr binary {self.ctr!r} not found (apt-get install "
                                 "containerd)", errno=errno_codes.ENOENT,
                                 retryable=False) from e
        if proc.returncode != 0:
            stderr = proc.stderr.strip()
            code, retryable = _classify(stderr)
            raise DataplaneError(f"{what or 'ctr ' + ' '.join(args[:2])} failed "
                                 f"(namespace {self.namespace}): {stderr or proc.stdout.strip()}",
                                 errno=code, retryable=retryable)
        return proc

    def _lines(self, *args: str) -> list[list[str]]:
        """A table ctr printed, without its header, each row split on whitespace."""
        out = self._ctr(*args).stdout.splitlines()
        return [line.split() for line in out[1:] if line.strip()]

    # -- the daemon -----------------------------------------------------------------------

    def wait_up(self, timeout: float) -> None:
        """Return once the daemon answers a call; ``DataplaneError`` (retryable) if it does not
        within ``timeout`` seconds. Polls the socket itself first, which is much cheaper than
        a ctr process."""
        deadline = time.monotonic() + timeout
        last = "the socket does not exist"
        while True:
            if _unix_connects(self.address):
                try:
                    self._ctr("version", timeout=max(1.0, min(5.0, timeout)))
                    return
                except DataplaneError as e:
                    last = str(e)
            if time.monotonic() >= deadline:
                raise DataplaneError(f"containerd at {self.address} did not answer within "
                                     f"{timeout:g} s: {last}",
                                     errno=errno_codes.ETIMEDOUT, retryable=True)
            time.sleep(0.01)

    # -- images ---------------------------------------------------------------------------

    def import_archive(self, path: Path, *, timeout: float | None = None) -> list[str]:
        """Import an OCI image-layout or ``docker save`` archive; return the names imported.

        Naming rule (containerd 1.6's ``ctr images import``, then ours):

        * OCI layout: the manifest's ``io.containerd.image.name`` annotation, verbatim (what
          :func:`dataplane.images.build_archive` writes: ``mobility/echo:TAG`` stays exactly
          that); else its ``org.opencontainers.image.ref.name`` verbatim when it holds a ``/``,
          ``:`` or ``@``; a bare tag ``T`` becomes ctr's ``import-YYYY-MM-DD:T``.
        * docker save: ctr names each ``RepoTags`` entry the docker way
          (``docker.io/[library/]REPO:TAG``, see :func:`docker_import_name`); we tag it back
          as written (with ``:latest`` if untagged) and drop the ``docker.io/`` alias, so the
          name in the archive is the name :meth:`run` takes, in both kinds.

        ``--all-platforms``: without it ctr 1.6 silently drops ("image might be filtered
        out") a docker-save image whose config names no architecture. The archive is checked
        first (:func:`dataplane.images.inspect_archive`); an archive naming no image is refused.
        If the import fails, the image records it made are removed (ctr makes them before it
        unpacks, so a failed unpack would leave an image that cannot run).
        """
        try:
            info = oci.inspect_archive(path)
        except ValueError as e:
            raise DataplaneError(f"refusing image archive: {e}", retryable=False) from e
        if not info.names:
            raise DataplaneError(f"image archive {path} names no image; give its manifest an "
                                 "io.containerd.image.name annotation or a RepoTag",
                                 retryable=False)
        before = set(self.image_names())
        self._configs.clear()
        try:
            proc = self._ctr("images", "import", "--all-platforms", "--snapshotter",
                             SNAPSHOTTER, str(path), timeout=timeout,
                             what=f"importing {path}")
        except DataplaneError:
            with contextlib.suppress(DataplaneError):
                for name in set(self.image_names()) - before:
                    self._ctr("images", "rm", name)
            raise
        imported = [name for name, _ in _UNPACKED.findall(proc.stdout)]
        if info.kind == "docker":
            imported = self._renormalize(info.names, imported)
        if not imported:
            raise DataplaneError(f"ctr imported no image from {path} (names in it: "
                                 f"{', '.join(info.names)})", retryable=False)
        log.info("containerd %s: imported %s from %s", self.namespace, ", ".join(imported), path)
        return imported

    def _renormalize(self, repo_tags: Sequence[str], imported: list[str]) -> list[str]:
        out: list[str] = []
        done: set[str] = set()
        for tag in repo_tags:
            try:
                want = oci.check_name(tag)
            except ValueError:
                continue  # a name with a registry port: leave ctr's
            got = docker_import_name(want)
            if got not in imported:
                continue  # ctr did not import it (another platform, say)
            if got != want:
                self._ctr("images", "tag", "--force", got, want)
                self._ctr("images", "rm", got)
                done.add(got)
            out.append(want)
        out.extend(n for n in imported if n not in done and n not in out)
        return out

    def image_names(self) -> list[str]:
        """The names of the images in the namespace (one call, no sizes)."""
        return [line for line in self._ctr("images", "ls", "-q").stdout.split() if line]

    def images(self) -> list[ImageInfo]:
        """Every image with its digest and size in bytes (sizes read from the manifests)."""
        out: list[ImageInfo] = []
        for row in self._lines("images", "ls"):
            if len(row) < 3:
                continue
            name, digest = row[0], row[2]
            size = self._sizes.get(digest)
            if size is None:
                size = self._image_size(digest)
                self._sizes[digest] = size
            out.append(ImageInfo(name, digest, size))
        return out

    def _content(self, digest: str) -> tuple[Any, int]:
        """The JSON document stored under ``digest`` and its size in bytes."""
        raw = self._ctr("content", "get", digest).stdout
        return json.loads(raw), len(raw.encode())

    def _manifest(self, digest: str) -> tuple[dict[str, Any], int]:
        """The linux/amd64 manifest under ``digest`` (an index is followed) and the bytes of
        the documents walked to it (the index, if any, and the manifest)."""
        doc, walked = self._content(digest)
        while "manifests" in doc:
            chosen = None
            for desc in doc["manifests"]:
                p = desc.get("platform") or {}
                if p.get("os", "linux") == "linux" and p.get("architecture", "amd64") == "amd64":
                    chosen = desc
                    break
            if chosen is None:
                raise DataplaneError(f"image {digest} has no linux/amd64 manifest",
                                     retryable=False)
            doc, size = self._content(chosen["digest"])
            walked += size
        return dict(doc), walked

    def _image_size(self, digest: str) -> int:
        manifest, walked = self._manifest(digest)
        return (walked + int(manifest["config"]["size"])
                + sum(int(layer["size"]) for layer in manifest.get("layers", [])))

    def has_image(self, name: str) -> bool:
        return name in self.image_names()

    def remove_image(self, name: str) -> None:
        """Remove the image ``name``; nothing happens if there is none (ctr says so and exits
        0). Its content goes with containerd's next garbage collection."""
        self._configs.pop(name, None)
        self._ctr("images", "rm", name)

    def image_config(self, name: str) -> ImageConfig:
        """The entry point, command, environment and working directory of image ``name``.

        Cached by name (so :meth:`run` with ``args`` stays one ctr call), dropped when this
        client imports or removes an image: the lab's tags are content hashes, so a name does
        not change content behind our back.
        """
        cached = self._configs.get(name)
        if cached is not None:
            return cached[1]
        rows = [r for r in self._lines("images", "ls") if r and r[0] == name]
        if not rows:
            raise DataplaneError(f"image {name!r} is not in namespace {self.namespace}",
                                 errno=errno_codes.ENOENT, retryable=False)
        digest = rows[0][2]
        manifest, _ = self._manifest(digest)
        config = ImageConfig.from_config(self._content(manifest["config"]["digest"])[0])
        self._configs[name] = (digest, config)
        return config

    # -- containers -----------------------------------------------------------------------

    def run(self, spec: ContainerRun) -> int:
        """Create and start ``spec`` as a detached container and task; return its host PID.

        One ``ctr run -d`` does create and start; the PID comes from ``--pid-file`` (no second
        call). Idempotent by id: a container that already runs a task is left alone and its
        PID returned (whatever its spec); one without a running task (it exited, or its shim
        died with the daemon) is deleted, with its snapshot, and made again.
        """
        _check_id(spec.id)
        if not Path(spec.netns).exists():
            raise NamespaceNotFound(f"network namespace {spec.netns} does not exist",
                                    errno=errno_codes.ENOENT, retryable=False)
        if spec.argv is not None and spec.args:
            raise ValueError("give argv (the whole command line) or args (after the image's "
                             "entry point), not both")
        spec.files_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = list(spec.argv) if spec.argv is not None else None
        if command is None and spec.args:
            command = [*self.image_config(spec.image).entrypoint, *spec.args]
            if not command:
                raise ValueError(f"image {spec.image} has no entry point to give args to")
        env_file = spec.files_dir / f"{spec.id}.env"
        pid_file = spec.files_dir / f"{spec.id}.pid"
        argv = self._run_argv(spec, env_file=env_file, pid_file=pid_file, command=command)
        started = time.monotonic()
        for attempt in (1, 2):
            with contextlib.suppress(FileNotFoundError):
                pid_file.unlink()
            _write_env_file(env_file, spec.env)
            try:
                self._ctr(*argv, what=f"starting container {spec.id}")
            except DataplaneError as e:
                if e.errno != errno_codes.EEXIST or attempt == 2:
                    if not e.retryable:  # the daemon answered: leave no half-made container
                        self._discard(spec.id)
                    raise DataplaneError(f"{e}{_log_tail(spec.log_path)}", errno=e.errno,
                                         retryable=e.retryable) from e
                pid = self.task_pid(spec.id)
                if pid is not None:
                    log.info("container %s already runs (pid %d)", spec.id, pid)
                    return pid
                log.info("container %s exists without a running task: making it again",
                         spec.id)
                self._discard(spec.id)
                continue
            finally:
                # ctr read it when it made the spec; the environment may hold credentials.
                with contextlib.suppress(FileNotFoundError):
                    env_file.unlink()
            pid = _read_pid(pid_file)
            if pid is None:  # no pid file written (not seen with ctr 1.6): ask the daemon
                pid = self.task_pid(spec.id)
            if pid is None:
                raise DataplaneError(f"container {spec.id} started but has no running task"
                                     f"{_log_tail(spec.log_path)}", retryable=False)
            log.info("container %s (%s) runs as pid %d, started in %.0f ms", spec.id,
                     spec.image, pid, (time.monotonic() - started) * 1000)
            return pid
        raise AssertionError("unreachable")

    def _run_argv(self, spec: ContainerRun, *, env_file: Path, pid_file: Path,
                  command: list[str] | None) -> list[str]:
        argv = ["run", "--detach", "--snapshotter", SNAPSHOTTER,
                "--with-ns", f"network:{spec.netns}",
                "--log-uri", "file://" + urllib.parse.quote(str(spec.log_path.resolve())),
                "--pid-file", str(pid_file), "--env-file", str(env_file)]
        if self.runc_root is not None:
            argv += ["--runc-root", self.runc_root]
        for m in spec.mounts:
            src = str(Path(m.src).resolve())
            for part in (src, m.dst):
                if any(c in part for c in ",=:") or not part.startswith("/"):
                    raise ValueError(f"mount path {part!r} must be absolute, without ',', '=' "
                                     "or ':' (ctr's --mount syntax)")
            mode = "ro" if m.readonly else "rw"
            argv += ["--mount", f"type=bind,src={src},dst={m.dst},options=rbind:{mode}"]
        if spec.cpus is not None:
            if spec.cpus <= 0:
                raise ValueError("cpus must be positive")
            argv += ["--cpus", f"{spec.cpus:g}"]
        if spec.memory_bytes is not None:
            if spec.memory_bytes < 4 << 20:
                raise ValueError("memory_bytes below 4 MiB cannot run anything")
            argv += ["--memory-limit", str(int(spec.memory_bytes))]
        if spec.cwd is not None:
            argv += ["--cwd", spec.cwd]
        argv += [spec.image, spec.id]
        if command is not None:
            argv += command
        return argv

    def _discard(self, cid: str) -> None:
        """Delete container ``cid``, its task and its snapshot, whatever state they are in."""
        with contextlib.suppress(DataplaneError):
            self._ctr("tasks", "rm", "--force", cid)
        with contextlib.suppress(DataplaneError):
            self._ctr("containers", "rm", cid)
        with contextlib.suppress(DataplaneError):
            self._ctr("snapshots", "--snapshotter", SNAPSHOTTER, "rm", cid)

    def tasks(self) -> dict[str, tuple[int, str]]:
        """Every task: id -> (host PID, status such as RUNNING, STOPPED, PAUSED)."""
        out: dict[str, tuple[int, str]] = {}
        for row in self._lines("tasks", "ls"):
            if len(row) >= 3 and row[1].isdigit():
                out[row[0]] = (int(row[1]), row[2])
        return out

    def task_pid(self, cid: str) -> int | None:
        """The host PID of ``cid``'s task if it is running (or paused), else ``None``."""
        task = self.tasks().get(cid)
        if task is None or task[1] not in ("RUNNING", "PAUSED", "PAUSING"):
            return None
        return task[0]

    def kill(self, cid: str, sig: int) -> None:
        """Send ``sig`` to the task's init process."""
        self._ctr("tasks", "kill", "--signal", str(int(sig)), cid,
                  what=f"signalling container {cid}")

    def stop(self, cid: str, *, grace: float) -> None:
        """SIGTERM the task, wait up to ``grace`` seconds, SIGKILL every process left, then
        delete the task, the container and its snapshot. Nothing to stop is not an error."""
        task = self.tasks().get(cid)
        if task is not None and task[1] in ("RUNNING", "PAUSED", "PAUSING"):
            pid = task[0]
            with _pidfd(pid) as fd:
                if task[1] != "RUNNING":
                    with contextlib.suppress(DataplaneError):
                        self._ctr("tasks", "resume", cid)
                # Straight to the process through its pidfd: no ctr call, and no chance of
                # signalling a reused PID.
                _signal(fd, f"container {cid}", signal.SIGTERM)
                # PID 1 of a namespace ignores a signal it has no handler for: an init that
                # does not catch SIGTERM (say, still starting) would make us wait the whole
                # grace for nothing.
                wait = grace if _catches_sigterm(pid) else 0.0
                if not _wait_exit(fd, pid, wait):
                    log.info("container %s: SIGKILL (%s)", cid,
                             f"still running after {grace:g} s" if wait else
                             "its init has no SIGTERM handler")
                    with contextlib.suppress(DataplaneError):
                        self._ctr("tasks", "kill", "--all", "--signal", "9", cid)
                    _wait_exit(fd, pid, 5.0)
        for _ in range(20):
            try:
                # Deletes a stopped task too, and the snapshot (ctr's default).
                self._ctr("containers", "rm", cid, what=f"deleting container {cid}")
                break
            except DataplaneError as e:
                if e.errno == errno_codes.ENOENT:
                    self.remove_snapshot(cid)  # a snapshot can outlive its container
                    return
                if "non stopped" not in str(e):
                    raise
                # The init process is gone but the shim has not reported it yet.
                time.sleep(0.02)
        else:
            self._discard(cid)
        log.info("container %s stopped and deleted", cid)

    def containers(self, labels: Mapping[str, str] | None = None) -> list[str]:
        """Container ids, those carrying every label of ``labels`` if given."""
        # one filter, its terms joined by commas: all must hold (separate filters are ORed)
        wanted = ",".join(f'labels."{k}"=={v}' for k, v in (labels or {}).items())
        filters = [wanted] if wanted else []
        return [line for line in self._ctr("containers", "ls", "-q", *filters).stdout.split()
                if line]

    def container_info(self, cid: str) -> dict[str, Any]:
        """containerd's record of a container (labels, OCI spec with its namespaces)."""
        proc = self._ctr("containers", "info", _check_id(cid), what=f"container {cid}")
        try:
            return dict(json.loads(proc.stdout))
        except ValueError as e:
            raise DataplaneError(f"container {cid}: ctr printed no JSON record") from e

    def snapshots(self) -> list[tuple[str, str]]:
        """The overlayfs snapshots: (key, kind) with kind ``Active``, ``Committed``, ..."""
        return [(row[0], row[-1])
                for row in self._lines("snapshots", "--snapshotter", SNAPSHOTTER, "ls")
                if len(row) >= 2]

    def remove_snapshot(self, key: str) -> None:
        """Remove snapshot ``key``; nothing happens if there is none."""
        try:
            self._ctr("snapshots", "--snapshotter", SNAPSHOTTER, "rm", key)
        except DataplaneError as e:
            if e.errno != errno_codes.ENOENT:
                raise


def _write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """``K=V`` lines, mode 0600 from its creation on. ctr reads the file with a line scanner
    (no quoting, no comments, 64 KiB lines), so what it cannot carry is refused."""
    lines = []
    for key, value in env.items():
        if not key or any(c in key for c in "=\n\0"):
            raise ValueError(f"bad environment variable name {key!r}")
        if "\n" in value or "\r" in value or "\0" in value:
            raise ValueError(f"environment variable {key} holds a newline or NUL; an env file "
                             "cannot carry it")
        line = f"{key}={value}"
        if len(line.encode()) > 60_000:
            raise ValueError(f"environment variable {key} is too long for ctr's env file")
        lines.append(line + "\n")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(lines))


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            tail = fh.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return f"; its log ends with: {tail}" if tail else ""


def _unix_connects(address: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(address)
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _pidfd(pid: int) -> Iterator[int | None]:
    """A pidfd for ``pid`` (readable once it exits, even though it is not our child), or
    ``None`` when the process is already gone."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _signal(fd: int | None, what: str, sig: int) -> None:
    """Send ``sig`` through a pidfd (a reused PID cannot receive it)."""
    if fd is None:
        return
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass  # already gone
    except OSError as e:
        log.warning("%s: cannot send signal %d: %s", what, sig, e.strerror)


def _catches_sigterm(pid: int) -> bool:
    """Whether SIGTERM can end ``pid``: it is not a namespace's PID 1, or it has a handler."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("NSpid", "").split()[-1:] != ["1"]:
        return True
    caught = int(fields.get("SigCgt", "0").strip() or "0", 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def _wait_exit(fd: int | None, pid: int, timeout: float) -> bool:
    """Whether the process of pidfd ``fd`` exited within ``timeout`` seconds."""
    if fd is None:
        return True
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    return bool(ready)


# -- cleanup ------------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [os.fsdecode(a) for a in raw.split(b"\0") if a]


def _pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _is_daemon_of(pid: int, paths: ContainerdPaths) -> bool:
    argv = _cmdline(pid)
    return (bool(argv) and Path(argv[0]).name == "containerd"
            and str(paths.config) in argv)


def find_daemon(paths: ContainerdPaths) -> int | None:
    """The PID of the containerd running with ``paths``' config, if one runs."""
    for pid in _pids():
        if _is_daemon_of(pid, paths):
            return pid
    return None


def shims_of(address: str) -> dict[int, str]:
    """The shim processes serving the daemon at ``address``: PID -> container id."""
    out: dict[int, str] = {}
    for pid in _pids():
        argv = _cmdline(pid)
        if not argv or not Path(argv[0]).name.startswith(SHIM_PREFIX):
            continue
        opts = dict(zip(argv[1::2], argv[2::2], strict=False))
        if opts.get("-address") == address:
            out[pid] = opts.get("-id", "")
    return out


def cgroup_dirs(namespace: str) -> list[Path]:
    """``<hierarchy>/<namespace>`` for every mounted cgroup hierarchy (v1 and v2) that has
    one: where ctr puts the containers of ``namespace``."""
    _check_namespace(namespace)
    out: list[Path] = []
    for mount in _mountinfo():
        if mount.fstype in ("cgroup", "cgroup2"):
            d = Path(mount.point) / namespace
            if (d / "cgroup.procs").exists():
                out.append(d)
    return out


@dataclass(frozen=True)
class _MountEntry:
    point: str
    fstype: str


def _unescape(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field_)


def _mountinfo() -> list[_MountEntry]:
    out: list[_MountEntry] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        parts = left.split()
        if len(parts) < 5 or not right:
            continue
        out.append(_MountEntry(_unescape(parts[4]), right.split()[0]))
    return out


def _under(path: str, root: Path) -> bool:
    r = str(root).rstrip("/")
    return path == r or path.startswith(r + "/")


def _umount(point: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    target = os.fsencode(point)
    if libc.umount2(target, 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno_codes.EINVAL:  # not a mount point (any more)
        return
    if libc.umount2(target, _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err != errno_codes.EINVAL:
            raise DataplaneError(f"cannot unmount {point}: {os.strerror(err)}", errno=err)


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def _cgroup_procs(d: Path) -> list[int]:
    pids: list[int] = []
    for sub, _dirs, _files in os.walk(d):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(sub, "cgroup.procs").read_text().split()]
    return pids


def shim_socket(address: str, namespace: str, cid: str) -> Path:
    """The socket the runc v2 shim of container ``cid`` listens on (containerd 1.6)."""
    digest = hashlib.sha256(os.path.join(address, namespace, cid).encode()).hexdigest()
    return SHIM_SOCKET_DIR / digest


def cleanup(paths: ContainerdPaths, namespace: str, *, daemon_pid: int | None,
            grace: float = 2.0, stop_daemon: bool = True) -> list[str]:
    """Remove what this lab's containerd made for ``namespace``, and say what was removed.

    What ``lab down`` calls, also after a crash (daemon killed -9, shims left running):

    1. If the daemon runs (``daemon_pid``, or found by its config path): stop and delete every
       container (task and snapshot with it) through ctr; then (``stop_daemon``) SIGTERM it,
       SIGKILL after 5 s.
    2. SIGKILL the shims whose command line carries this daemon's address, and every process
       in this namespace's cgroups (thawing a frozen one first: a frozen task cannot die).
    3. Unmount everything under the daemon's root, state and runc directories (deepest first,
       lazily if busy), then delete the bundle and runc state directories of this namespace.
    4. Remove the shims' sockets (/run/containerd/s/<sha256(address/namespace/id)>) and the
       cgroup directories ``<hierarchy>/<namespace>/...`` bottom-up.

    Nothing of another run directory or namespace is touched: processes are picked by this
    address or by this namespace's cgroups, mounts by path, sockets by their hash. The run
    directory itself (images, bolt database) is the caller's to delete.
    """
    _check_namespace(namespace)
    removed: list[str] = []
    address = str(paths.address)
    if daemon_pid is not None and not _is_daemon_of(daemon_pid, paths):
        daemon_pid = None  # gone, or the PID was reused by something else
    if daemon_pid is None:
        daemon_pid = find_daemon(paths)
    ids: set[str] = set()
    if daemon_pid is not None:
        client = paths.client(namespace, timeout=30)
        try:
            client.wait_up(2.0)
            for cid in client.containers():
                ids.add(cid)
                client.stop(cid, grace=grace)
                removed.append(f"container {cid}")
            for key, kind in client.snapshots():
                if kind == "Active":
                    client.remove_snapshot(key)
                    removed.append(f"snapshot {key}")
        except DataplaneError as e:
            log.warning("containerd %s does not answer (%s): cleaning up by hand", address, e)
        if stop_daemon:
            _terminate(daemon_pid, 5.0)
            removed.append(f"containerd pid {daemon_pid}")

    for d in cgroup_dirs(namespace):  # a frozen task cannot die: thaw first
        for sub, _dirs, files in os.walk(d):
            if "freezer.state" in files:
                with contextlib.suppress(OSError):
                    Path(sub, "freezer.state").write_text("THAWED")
    own = os.getpid()
    for pid, cid in shims_of(address).items():
        if _kill(pid):
            removed.append(f"shim pid {pid} ({cid})")
        if cid:
            ids.add(cid)
    deadline = time.monotonic() + 5.0
    killed: set[int] = set()
    while True:
        left = {p for d in cgroup_dirs(namespace) for p in _cgroup_procs(d)} - {own}
        if not left or time.monotonic() > deadline:
            break
        for pid in left - killed:
            if _kill(pid):
                removed.append(f"process {pid}")
        killed |= left
        time.sleep(0.02)

    bundles = paths.state / "io.containerd.runtime.v2.task" / namespace
    if bundles.is_dir():
        ids |= {p.name for p in bundles.iterdir()}
    points = [m.point for m in _mountinfo()
              if any(_under(m.point, r) for r in (paths.root, paths.state, paths.runc_root))]
    for point in sorted(points, key=lambda p: (p.count("/"), p), reverse=True):
        _umount(point)
        removed.append(f"mount {point}")
    still = [m.point for m in _mountinfo() if _under(m.point, paths.base)]
    for d in (bundles, paths.runc_root / namespace):
        if d.is_dir() and not any(_under(p, d) for p in still):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(f"directory {d}")

    # A client made without runc_root (ContainerdPaths.client sets it) left runc's state in
    # the shared default root: remove exactly this namespace's containers' there.
    default_runc = DEFAULT_RUNC_ROOT / namespace
    for cid in sorted(ids):
        state = default_runc / cid
        if (state / "state.json").is_file():
            shutil.rmtree(state, ignore_errors=True)
            removed.append(f"directory {state}")
    with contextlib.suppress(OSError):
        default_runc.rmdir()
    for cid in sorted(ids):
        sock = shim_socket(address, namespace, cid)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
            removed.append(f"socket {sock}")
    if stop_daemon and find_daemon(paths) is None:
        for sock in (paths.address, paths.ttrpc_address):
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()

    for d in cgroup_dirs(namespace):
        for sub, _dirs, _files in os.walk(d, topdown=False):
            if _rmdir_cgroup(Path(sub)):
                removed.append(f"cgroup {sub}")
    left_dirs = cgroup_dirs(namespace)
    if left_dirs:
        log.warning("cgroups of namespace %s left: %s", namespace,
                    ", ".join(map(str, left_dirs)))
    log.info("containerd cleanup of %s (%s): %d items", namespace, paths.base, len(removed))
    return removed


def _rmdir_cgroup(d: Path) -> bool:
    """rmdir a cgroup, retrying while its last tasks finish exiting (EBUSY)."""
    for _ in range(50):
        try:
            d.rmdir()
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno != errno_codes.EBUSY:
                log.warning("cannot remove cgroup %s: %s", d, e.strerror)
                return False
            time.sleep(0.02)
    log.warning("cgroup %s still busy", d)
    return False


def _terminate(pid: int, grace: float) -> None:
    with _pidfd(pid) as fd:
        if fd is None:
            return
        _signal(fd, f"daemon {pid}", signal.SIGTERM)
        if not _wait_exit(fd, pid, grace):
            _signal(fd, f"daemon {pid}", signal.SIGKILL)
            _wait_exit(fd, pid, 5.0)
        # Reap it if it is our child (the lab's stack may have started it as one).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
