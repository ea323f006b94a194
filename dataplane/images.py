"""OCI image archives without docker: build them from directories, check the ones we are given.

Why our own writer: the lab's images come from a debootstrap rootfs and the project's sources,
and this machine has no docker daemon and no registry. An OCI image layout is only a tar of
JSON documents and content-addressed blobs, so the standard library builds one.

What :func:`build_archive` writes is deterministic: the same directories (same content, modes,
owners and link structure) give the same layer, config and manifest digests, whatever the
files' mtimes, the order the file system lists them in, or the machine's user names. So a
layer built twice is one blob in containerd's content store, and an image extending a base
(``base=``) shares the base's blobs byte for byte.

Layers are uncompressed tars: containerd unpacks them without a gunzip pass, and on a local
import compression saves nothing but CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

log = logging.getLogger(__name__)

# A path component: lowercase alphanumerics, with ``.``, ``_``, ``__`` or dashes inside
# (the distribution reference grammar, without a registry host:port or a digest).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
NAME_RE = re.compile(rf"^(?P<repo>{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>{_TAG}))?$")
NAME_MAX = 200
DEFAULT_TAG = "latest"

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"

# Every entry of every tar we write carries this mtime (a fixed point, so digests are stable).
FIXED_MTIME = 0
CREATED = "1970-01-01T00:00:00Z"
CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 8 << 30


def check_name(name: str) -> str:
    """The image reference ``name`` with its tag (``latest`` when it has none).

    Accepted: ``repo[:tag]`` where ``repo`` is lowercase ``[a-z0-9]`` components separated by
    ``/``, each with ``.``, ``_`` or ``-`` only inside; no registry port, no digest. Raises
    ``ValueError`` saying which part is wrong, so a person can fix it.
    """
    if not name:
        raise ValueError("an image name must not be empty")
    if len(name) > NAME_MAX:
        raise ValueError(f"image name is {len(name)} characters long; at most {NAME_MAX}")
    m = NAME_RE.match(name)
    if m is None:
        repo, _, tag = name.partition(":")
        if "@" in name:
            why = "digests (@sha256:...) are not accepted; use a tag"
        elif tag and not re.fullmatch(_TAG, tag):
            why = (f"tag {tag!r} must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'")
        elif repo != repo.lower():
            why = "the repository part must be lowercase"
        elif any(not re.fullmatch(_COMPONENT, part) for part in repo.split("/")):
            why = ("each '/'-separated component must be [a-z0-9] with '.', '_' or '-' only "
                   "between alphanumerics")
        else:
            why = "expected repo[/repo...][:tag]"
        raise ValueError(f"bad image name {name!r}: {why}")
    return f"{m['repo']}:{m['tag'] or DEFAULT_TAG}"


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and its size in bytes."""

    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class ArchiveInfo:
    """What :func:`inspect_archive` found: the layout (``oci`` or ``docker``), the image names it
    declares (as written in the archive, see :func:`dataplane.containers.Containerd.import_archive`
    for how containerd names them), and the archive's size in bytes."""

    kind: Literal["oci", "docker"]
    names: tuple[str, ...]
    size: int


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's config that decide how it runs (all empty: not set)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str = ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ImageConfig:
        """From an OCI (or docker) image config document."""
        cfg = config.get("config") or {}
        return cls(tuple(cfg.get("Entrypoint") or ()), tuple(cfg.get("Cmd") or ()),
                   tuple(cfg.get("Env") or ()), str(cfg.get("WorkingDir") or ""))


class _HashingWriter:
    """A write-only file that hashes and counts what goes through it to ``target`` (tarfile's
    stream mode writes whole records, so no buffering is needed here)."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.target.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def read(self, size: int, /) -> bytes:
        raise io.UnsupportedOperation("write-only")

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("not seekable")

    def close(self) -> None:
        """The target is the caller's to close."""

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha.hexdigest()}"


def _layer_entries(root: Path) -> Iterator[tuple[str, Path]]:
    """Every entry under ``root`` (itself excluded) as (archive name, path): depth first, each
    directory before its content, names sorted by their bytes (not by locale), so two walks of
    the same tree agree. Symlinked directories are entries, not followed."""

    def walk(prefix: str, directory: Path) -> Iterator[tuple[str, Path]]:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        for entry in entries:
            arcname = f"{prefix}{entry.name}"
            path = Path(entry.path)
            yield arcname, path
            if entry.is_dir(follow_symlinks=False):
                yield from walk(f"{arcname}/", path)

    yield from walk("", root)


def write_layer(root: Path, out: IO[bytes]) -> Descriptor:
    """Write ``root``'s tree as one uncompressed, deterministic layer tar to ``out``.

    Entries are sorted, mtimes fixed, owners numeric only (uid/gid kept, names dropped: the
    container's /etc/passwd decides what they mean), permissions including setuid kept;
    symlinks and hard links stay links; device nodes, sockets and fifos are skipped (the
    runtime gives a container its own /dev). Extended attributes are not carried.
    Returns the descriptor of what was written; the digest is the layer's diff id too, since
    the layer is not compressed.
    """
    if not root.is_dir():
        raise ValueError(f"layer directory {root} does not exist or is not a directory")
    writer = _HashingWriter(out)
    seen_inodes: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT,
                      bufsize=CHUNK) as tar:
        for arcname, path in _layer_entries(root):
            st = path.lstat()
            info = tarfile.TarInfo(arcname)
            info.mtime = FIXED_MTIME
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            info.uname = info.gname = ""
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen_inodes:
                    info.type = tarfile.LNKTYPE
                    info.linkname = seen_inodes[key]
                    tar.addfile(info)
                    continue
                if st.st_nlink > 1:
                    seen_inodes[key] = arcname
                info.size = st.st_size
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                log.debug("layer %s: skipping special file %s", root, arcname)
    return Descriptor(MEDIA_LAYER, writer.digest, writer.size)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _blob_info(name, len(data))
    tar.addfile(info, io.BytesIO(data))


def _blob_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uname = info.gname = ""
    return info


def _json_bytes(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _blob_name(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise ValueError(f"unsupported digest {digest!r}")
    return f"blobs/sha256/{hexpart}"


class _Archive:
    """Read access to an OCI layout tar: its members by normalized name, its JSON blobs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Kept open across calls (the blobs are streamed out of it); close() closes it.
        try:
            self.tar = tarfile.open(path, "r:")  # noqa: SIM115
        except (OSError, tarfile.TarError) as e:
            raise ValueError(f"{path} is not a readable, uncompressed tar archive: {e}") from e
        self.members = {_safe_member_name(m.name): m for m in self.tar.getmembers()}

    def close(self) -> None:
        self.tar.close()

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(name)
        if member is None or not member.isfile():
            raise ValueError(f"{self.path}: no {name} in the archive")
        fh = self.tar.extractfile(member)
        if fh is None:
            raise ValueError(f"{self.path}: {name} is not a regular file")
        return fh

    def json(self, name: str) -> Any:
        with self.open(name) as fh:
            return json.loads(fh.read())

    def blob_json(self, digest: str) -> Any:
        return self.json(_blob_name(digest))

    def image(self, name: str | None = None) -> tuple[list[tuple[Descriptor, str]],
                                                      dict[str, Any]]:
        """The layers (descriptor, member holding the blob) and the config of the archive's
        image ``name`` (default: its first linux/amd64 one), for an OCI layout or a docker
        save archive (whose layers are hashed here: docker names them by path, not digest)."""
        if "index.json" in self.members:
            manifests = _list_of_dicts(self.json("index.json").get("manifests"),
                                       f"{self.path}: index.json manifests")
            if name is not None:
                manifests = [d for d in manifests if name in _oci_names(d)]
                if not manifests:
                    raise ValueError(f"{self.path}: no image named {name!r} in the archive")
            manifest = self._pick(manifests)
            config = self.blob_json(manifest["config"]["digest"])
            layers = [(Descriptor(d["mediaType"], d["digest"], int(d["size"])),
                       _blob_name(d["digest"])) for d in manifest["layers"]]
            return layers, config
        if "manifest.json" in self.members:
            entries = _list_of_dicts(self.json("manifest.json"), f"{self.path}: manifest.json")
            if name is not None:
                entries = [e for e in entries if name in _docker_names(e)]
            if not entries:
                raise ValueError(f"{self.path}: no image {name or ''} in manifest.json")
            entry = entries[0]
            config = self.json(_safe_member_name(str(entry["Config"])))
            docker_layers: list[tuple[Descriptor, str]] = []
            for layer_path in entry.get("Layers") or []:
                member = self._resolve(_safe_member_name(str(layer_path)))
                docker_layers.append((self._describe(member), member))
            return docker_layers, config
        raise ValueError(f"{self.path}: neither an OCI layout nor a docker save archive")

    def _resolve(self, name: str) -> str:
        """``name``, its symlinks followed inside the archive (docker save links layers that
        two images share)."""
        for _ in range(8):
            member = self.members.get(name)
            if member is None or not member.issym():
                return name
            name = _safe_member_name(posixpath.normpath(
                posixpath.join(posixpath.dirname(name), member.linkname)))
        raise ValueError(f"{self.path}: too many symlinks at {name}")

    def _describe(self, member: str) -> Descriptor:
        """A layer's descriptor from its bytes (digest, size, gzip or not)."""
        sha = hashlib.sha256()
        size = 0
        with self.open(member) as fh:
            head = fh.read(2)
            sha.update(head)
            size += len(head)
            while chunk := fh.read(CHUNK):
                sha.update(chunk)
                size += len(chunk)
        media = MEDIA_LAYER + ("+gzip" if head == b"\x1f\x8b" else "")
        return Descriptor(media, f"sha256:{sha.hexdigest()}", size)

    def _pick(self, manifests: list[dict[str, Any]]) -> dict[str, Any]:
        for desc in manifests:
            platform = desc.get("platform")
            if platform and (platform.get("os"), platform.get("architecture")) != (
                    "linux", "amd64"):
                continue
            doc = self.blob_json(desc["digest"])
            if desc.get("mediaType") in (MEDIA_INDEX, DOCKER_MANIFEST_LIST) or "manifests" in doc:
                return self._pick(_list_of_dicts(doc.get("manifests"), f"{self.path}: index"))
            return dict(doc)
        raise ValueError(f"{self.path}: no linux/amd64 image manifest in the archive")


def _merge_env(base: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``base`` (``K=V`` strings) with ``env`` applied: same keys replaced in place, new ones
    appended in ``env``'s order (so PATH stays where the base had it)."""
    for key in env:
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"bad environment variable name {key!r}")
    out: list[str] = []
    done: set[str] = set()
    for item in base:
        key = item.partition("=")[0]
        if key in env:
            out.append(f"{key}={env[key]}")
            done.add(key)
        else:
            out.append(item)
    out.extend(f"{k}={v}" for k, v in env.items() if k not in done)
    return out


@contextlib.contextmanager
def _atomic_output(out: Path) -> Iterator[IO[bytes]]:
    """A temp file beside ``out``, fsynced and renamed onto it on success, removed on failure:
    a crash leaves the old archive or none, never half of one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def build_archive(out: Path, *, name: str, layers: Sequence[Path], base: Path | None = None,
                  entrypoint: Sequence[str] | None = None, cmd: Sequence[str] | None = None,
                  env: Mapping[str, str] | None = None, workdir: str | None = None,
                  base_name: str | None = None) -> Path:
    """Write an OCI image-layout tar at ``out`` holding the image ``name``, and return ``out``.

    The image is ``base``'s layers (an OCI archive as this function or ``ctr images export``
    writes, or a ``docker save`` archive; its blobs are copied as they are, not re-tarred, and
    checked against their digests on the way; ``base_name`` picks one image of a base holding
    several, default its first linux/amd64 one) followed by one uncompressed layer per
    directory of ``layers``, in order. The config keeps ``base``'s environment, entry point,
    command and working directory unless given here; ``env`` is merged into the base's by key.
    Giving ``entrypoint`` without ``cmd`` drops the base's command (as a Dockerfile's
    ENTRYPOINT does). ``index.json`` names the manifest with both ``io.containerd.image.name``
    (the full ``repo:tag``, what ``ctr images import`` names the image) and
    ``org.opencontainers.image.ref.name`` (the tag, as the OCI layout spec uses it).
    """
    full_name = check_name(name)
    tag = full_name.rpartition(":")[2]
    base_layers: list[Descriptor] = []
    members: dict[str, str] = {}
    base_diff_ids: list[str] = []
    base_config: dict[str, Any] = {}
    base_history: list[Any] = []
    source = _Archive(base) if base is not None else None
    try:
        if source is not None:
            layer_sources, config = source.image(base_name)
            base_layers = [d for d, _ in layer_sources]
            members = {d.digest: member for d, member in layer_sources}
            base_diff_ids = list(config["rootfs"]["diff_ids"])
            if len(base_diff_ids) != len(base_layers):
                raise ValueError(f"{base}: config has {len(base_diff_ids)} diff ids for "
                                 f"{len(base_layers)} layers")
            base_config = dict(config.get("config") or {})
            base_history = list(config.get("history") or [])
        with _atomic_output(out) as fh, tarfile.open(fileobj=fh, mode="w|",
                                                    format=tarfile.PAX_FORMAT,
                                                    bufsize=CHUNK) as tar:
            _add_bytes(tar, "oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}))
            written: set[str] = set()
            for desc in base_layers:
                assert source is not None
                if desc.digest in written:
                    continue
                with source.open(members[desc.digest]) as blob:
                    tar.addfile(_blob_info(_blob_name(desc.digest), desc.size),
                                _VerifiedReader(blob, digest=desc.digest, size=desc.size))
                written.add(desc.digest)
            new_layers: list[Descriptor] = []
            for layer_dir in layers:
                desc = _add_layer(tar, Path(layer_dir), out.parent, written)
                new_layers.append(desc)
                log.debug("image %s: layer %s from %s (%d bytes)", full_name, desc.digest,
                          layer_dir, desc.size)
            cfg = dict(base_config)
            if env:
                cfg["Env"] = _merge_env(list(cfg.get("Env") or []), env)
            if entrypoint is not None:
                cfg["Entrypoint"] = list(entrypoint)
                if cmd is None:
                    cfg.pop("Cmd", None)
            if cmd is not None:
                cfg["Cmd"] = list(cmd)
            if workdir is not None:
                cfg["WorkingDir"] = workdir
            history = base_history + [
                {"created": CREATED, "created_by": f"dataplane.images layer {i}"}
                for i in range(len(new_layers))]
            config_doc = {
                "architecture": "amd64",
                "os": "linux",
                "created": CREATED,
                "config": cfg,
                "rootfs": {"type": "layers",
                           "diff_ids": base_diff_ids + [d.digest for d in new_layers]},
                "history": history,
            }
            config_bytes = _json_bytes(config_doc)
            config_desc = Descriptor(MEDIA_CONFIG, _digest(config_bytes), len(config_bytes))
            manifest_doc = {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": config_desc.to_json(),
                "layers": [d.to_json() for d in base_layers + new_layers],
            }
            manifest_bytes = _json_bytes(manifest_doc)
            manifest_desc = Descriptor(MEDIA_MANIFEST, _digest(manifest_bytes),
                                       len(manifest_bytes))
            for desc, data in ((config_desc, config_bytes), (manifest_desc, manifest_bytes)):
                if desc.digest not in written:
                    _add_bytes(tar, _blob_name(desc.digest), data)
                    written.add(desc.digest)
            index_doc = {
                "schemaVersion": 2,
                "mediaType": MEDIA_INDEX,
                "manifests": [{
                    **manifest_desc.to_json(),
                    "annotations": {ANNOTATION_IMAGE_NAME: full_name,
                                    ANNOTATION_REF_NAME: tag},
                    "platform": {"architecture": "amd64", "os": "linux"},
                }],
            }
            _add_bytes(tar, "index.json", _json_bytes(index_doc))
    finally:
        if source is not None:
            source.close()
    log.debug("image %s: wrote %s (manifest %s)", full_name, out, manifest_desc.digest)
    return out


def _add_layer(tar: tarfile.TarFile, layer_dir: Path, scratch: Path,
               written: set[str]) -> Descriptor:
    """Tar ``layer_dir`` to a scratch file (its digest names the blob, so it must be known
    before the blob's header is written), then stream that file into ``tar``."""
    with tempfile.TemporaryFile(dir=scratch) as tmp:
        desc = write_layer(layer_dir, tmp)
        if desc.digest not in written:
            tmp.seek(0)
            tar.addfile(_blob_info(_blob_name(desc.digest), desc.size), tmp)
            written.add(desc.digest)
    return desc


class _VerifiedReader:
    """A reader over ``size`` bytes of ``src`` that fails at the end if they do not hash to
    ``digest``: the base's blobs are streamed into the new archive and checked on the way."""

    def __init__(self, src: IO[bytes], *, digest: str, size: int) -> None:
        self.src = src
        self.digest = digest
        self.left = size
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.left
        chunk = self.src.read(min(n, self.left)) if self.left else b""
        if not chunk and self.left:
            raise ValueError(f"blob {self.digest} is shorter than its descriptor says")
        self.sha.update(chunk)
        self.left -= len(chunk)
        if not self.left and f"sha256:{self.sha.hexdigest()}" != self.digest:
            raise ValueError(f"blob {self.digest} does not match its digest")
        return chunk


def bundle_archives(out: Path, archives: Sequence[Path]) -> Path:
    """Write one OCI layout holding every image of ``archives`` (each blob once) at ``out``.

    Why: ``ctr images import`` streams every blob of an archive to containerd even when the
    store has it already (it learns a blob's digest only by reading it), so importing six
    images that share a 120 MB rootfs one archive at a time sends that rootfs six times; one
    bundle sends it once. The manifests keep their annotations, so the names do not change.
    """
    manifests: list[dict[str, Any]] = []
    written: set[str] = set()
    with _atomic_output(out) as fh, tarfile.open(fileobj=fh, mode="w|",
                                                format=tarfile.PAX_FORMAT,
                                                bufsize=CHUNK) as tar:
        _add_bytes(tar, "oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}))
        for path in archives:
            source = _Archive(path)
            try:
                index = source.json("index.json")
                manifests.extend(_list_of_dicts(index.get("manifests"),
                                                f"{path}: index.json manifests"))
                for name, member in sorted(source.members.items()):
                    if not name.startswith("blobs/sha256/") or not member.isfile():
                        continue
                    digest = "sha256:" + name.rpartition("/")[2]
                    if digest in written:
                        continue
                    with source.open(name) as blob:
                        tar.addfile(_blob_info(_blob_name(digest), member.size),
                                    _VerifiedReader(blob, digest=digest, size=member.size))
                    written.add(digest)
            finally:
                source.close()
        _add_bytes(tar, "index.json", _json_bytes({"schemaVersion": 2, "mediaType": MEDIA_INDEX,
                                                   "manifests": manifests}))
    log.debug("bundled %d images into %s", len(manifests), out)
    return out


def _safe_member_name(name: str) -> str:
    """The member's name, normalized; ``ValueError`` when it is absolute or climbs out."""
    if name.startswith("/") or "\\" in name:
        raise ValueError(f"archive member {name!r} has an absolute or non-POSIX path")
    parts = name.split("/")
    if ".." in parts:
        raise ValueError(f"archive member {name!r} contains '..'")
    return posixpath.normpath(name)


def inspect_archive(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> ArchiveInfo:
    """Check that ``path`` is an image archive we may hand to containerd, and say what it holds.

    Accepted: an uncompressed tar with ``index.json`` and ``oci-layout`` (an OCI image layout)
    or with a ``manifest.json`` (``docker save``). Refused with ``ValueError``: anything else,
    an archive (or the sum of its members) larger than ``max_bytes``, a member whose path is
    absolute or contains ``..``, a link pointing out of the archive, and any member that is not
    a file, directory or link. Names: for OCI, each manifest's ``io.containerd.image.name``
    annotation, else its ``org.opencontainers.image.ref.name``; for docker, the ``RepoTags``.
    """
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ValueError(f"cannot read image archive {path}: {e.strerror}") from e
    if size > max_bytes:
        raise ValueError(f"image archive {path} is {size} bytes; the limit is {max_bytes}")
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 (the with below closes it)
    except tarfile.TarError as e:
        raise ValueError(f"{path} is not an (uncompressed) tar archive: {e}") from e
    with tar:
        total = 0
        members: dict[str, tarfile.TarInfo] = {}
        try:
            for member in tar:
                name = _safe_member_name(member.name)
                if member.issym() or member.islnk():
                    target = (posixpath.join(posixpath.dirname(name), member.linkname)
                              if member.issym() else member.linkname)
                    if member.linkname.startswith("/") or posixpath.normpath(
                            target).split("/")[0] == "..":
                        raise ValueError(f"archive member {member.name!r} links out of the "
                                         f"archive ({member.linkname!r})")
                elif not (member.isfile() or member.isdir()):
                    raise ValueError(f"archive member {member.name!r} is not a regular file "
                                     "or a directory")
                total += member.size
                if total > max_bytes:
                    raise ValueError(f"image archive {path} unpacks to more than {max_bytes} "
                                     "bytes")
                members[name] = member
        except tarfile.TarError as e:
            raise ValueError(f"{path} is not a valid tar archive: {e}") from e

        def read_json(name: str) -> Any:
            fh = tar.extractfile(members[name])
            if fh is None or members[name].size > (16 << 20):
                raise ValueError(f"{path}: {name} is not a small regular file")
            try:
                return json.loads(fh.read())
            except ValueError as e:
                raise ValueError(f"{path}: {name} is not valid JSON: {e}") from e

        if "index.json" in members and "oci-layout" in members:
            index = read_json("index.json")
            names: list[str] = []
            for desc in _list_of_dicts(index.get("manifests"), f"{path}: index.json manifests"):
                ann = desc.get("annotations") or {}
                ref = ann.get(ANNOTATION_IMAGE_NAME) or ann.get(ANNOTATION_REF_NAME)
                if isinstance(ref, str) and ref:
                    names.append(ref)
            return ArchiveInfo("oci", tuple(names), size)
        if "manifest.json" in members:
            manifest = read_json("manifest.json")
            names = []
            for entry in _list_of_dicts(manifest, f"{path}: manifest.json"):
                tags = entry.get("RepoTags") or []
                names.extend(t for t in tags if isinstance(t, str))
            return ArchiveInfo("docker", tuple(names), size)
    raise ValueError(f"{path} is neither an OCI image layout (index.json + oci-layout) nor a "
                     "docker save archive (manifest.json)")


def _list_of_dicts(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"{what} is not a list of objects")
    return value


def layer_digests(path: Path, name: str | None = None) -> list[str]:
    """The layer blob digests of the archive's image ``name`` (default its first linux/amd64
    one), base first: what shows that images share their base's blobs."""
    archive = _Archive(path)
    try:
        layers, _ = archive.image(name)
        return [d.digest for d, _ in layers]
    finally:
        archive.close()


def archive_configs(path: Path) -> dict[str, ImageConfig]:
    """The run settings of every named image in an archive, keyed by the name containerd
    gives it on import (see :meth:`dataplane.containers.Containerd.import_archive`); an image
    ctr would name by date (a bare tag as its only name) or of another platform is left out."""
    archive = _Archive(path)
    out: dict[str, ImageConfig] = {}
    try:
        if "index.json" in archive.members:
            for desc in _list_of_dicts(archive.json("index.json").get("manifests"),
                                       f"{path}: index.json manifests"):
                name = _oci_import_name(desc)
                if name is None:
                    continue
                try:
                    manifest = archive._pick([desc])
                except ValueError:
                    continue
                config = archive.blob_json(manifest["config"]["digest"])
                out[name] = ImageConfig.from_config(config)
        elif "manifest.json" in archive.members:
            for entry in _list_of_dicts(archive.json("manifest.json"),
                                        f"{path}: manifest.json"):
                config = archive.json(_safe_member_name(str(entry["Config"])))
                for name in _docker_names(entry):
                    out[name] = ImageConfig.from_config(config)
        else:
            raise ValueError(f"{path}: neither an OCI layout nor a docker save archive")
    finally:
        archive.close()
    return out


def docker_import_name(name: str) -> str:
    """The name ``ctr images import`` gives a docker-save ``RepoTag`` ``name``: docker's
    normalization (``docker.io/`` unless the first component is a host, ``library/`` for a
    one-component name on docker.io, ``:latest`` when untagged)."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, remainder = first, rest
    else:
        domain, remainder = "docker.io", name
    if domain == "docker.io" and "/" not in remainder:
        remainder = f"library/{remainder}"
    last = remainder.rpartition("/")[2]
    if ":" not in last and "@" not in last:
        remainder = f"{remainder}:latest"
    return f"{domain}/{remainder}"


def _oci_names(desc: Mapping[str, Any]) -> set[str]:
    ann = desc.get("annotations") or {}
    return {str(ann[k]) for k in (ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME) if ann.get(k)}


def _oci_import_name(desc: Mapping[str, Any]) -> str | None:
    """What ctr 1.6 names an OCI index entry: ``io.containerd.image.name``, else a ref name
    that is a whole reference; None for a bare tag (ctr makes ``import-<date>:<tag>``)."""
    ann = desc.get("annotations") or {}
    name = ann.get(ANNOTATION_IMAGE_NAME)
    if name:
        return str(name)
    ref = ann.get(ANNOTATION_REF_NAME)
    if ref and any(c in str(ref) for c in "/:@"):
        return str(ref)
    return None


def _docker_names(entry: Mapping[str, Any]) -> list[str]:
    """A docker-save entry's ``RepoTags`` as they end up in containerd after our import:
    checked names (``:latest`` added), or ctr's own name for one we do not accept."""
    out = []
    for tag in entry.get("RepoTags") or []:
        if not isinstance(tag, str):
            continue
        try:
            out.append(check_name(tag))
        except ValueError:
            out.append(docker_import_name(tag))
    return out
