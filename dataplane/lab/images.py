"""The lab's reference container images, built once per source tree and cached.

Six images, all from the same Debian rootfs (``scripts/base_rootfs.sh``):

* ``mobility/python``: the rootfs plus the SDK (``state_transfer``, its ``.py`` files), the
  base a user's own application is built on;
* ``mobility/echo``, ``probe``, ``middlebox``, ``sessions``, ``session-probe``: that base plus
  the reference workloads (``dataplane.lab.workloads``), each with
  ``python3 -m <its module>`` as its entry point (the node agent appends the arguments).

Layers: (1) the rootfs, (2) the SDK, (3) the workloads. Each image extends the base archive
(``base=``), so all six carry byte-identical rootfs and SDK blobs and containerd stores them
once. The tag is a content hash (:func:`reference_tag`): the rootfs stamp (its package list)
and every file copied in. A changed source makes new images under a new tag, and a node agent
of that source tree knows which tag to run (:func:`reference_image`).

On disk: ``<cache>/images/<tag>/<image>.tar`` per image, and ``reference.tar``, one bundle
of all six (each blob once): import that one, it is six times cheaper (see
:func:`dataplane.images.bundle_archives`).

``python -m dataplane.lab.images build`` builds what is missing and prints the archives.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import logging
import os
import py_compile
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from dataplane import images as oci

log = logging.getLogger(__name__)

# The project's root: dataplane/lab/images.py -> the directory holding dataplane/.
SOURCE_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path("/root/.cache/service-mobility")
ROOTFS_NAME = "bookworm-python3"
ROOTFS_SCRIPT = "scripts/base_rootfs.sh"
ROOTFS_STAMP = "etc/service-mobility-rootfs"
SITE_PACKAGES = "usr/lib/python3/dist-packages"
BUNDLE = "reference.tar"
# Bumped when what build_reference makes changes for the same inputs (layout, config).
BUILD_FORMAT = "1"
STALE_TAG_S = 3600.0

BASE_IMAGE = "mobility/python"
BASE_DESCRIPTION = "Debian bookworm, python3, msgpack and the state_transfer SDK"

# Image name -> (module run as ``python3 -m``, description).
REFERENCE: Mapping[str, tuple[str, str]] = {
    "mobility/echo": ("dataplane.lab.workloads.echo", "UDP echo service"),
    "mobility/probe": ("dataplane.lab.workloads.probe", "sequenced UDP probe"),
    "mobility/middlebox": ("dataplane.lab.workloads.middlebox", "stateful UDP middlebox"),
    "mobility/sessions": ("dataplane.lab.workloads.sessions",
                          "stateful session service with a state agent"),
    "mobility/session-probe": ("dataplane.lab.workloads.session_probe",
                               "session client that checks continuity across a move"),
}

# Workload name (as the node agent and the API spell it) -> module.
REFERENCE_MODULES: Mapping[str, str] = {
    name.partition("/")[2]: module for name, (module, _) in REFERENCE.items()}

IMAGE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}


class ReferenceImageError(Exception):
    """The reference images cannot be built (the message says what to do)."""


class RootfsMissing(ReferenceImageError, FileNotFoundError):
    """The base rootfs has not been built on this machine."""


def cache_dir(override: Path | None = None) -> Path:
    """``override``, else ``$MOBILITY_CACHE``, else /root/.cache/service-mobility."""
    if override is not None:
        return override
    return Path(os.environ.get("MOBILITY_CACHE") or DEFAULT_CACHE)


def rootfs_dir(cache: Path | None = None) -> Path:
    """The rootfs directory; ``RootfsMissing`` (naming the script to run) if it is not built."""
    path = cache_dir(cache) / "rootfs" / ROOTFS_NAME
    if not (path / ROOTFS_STAMP).is_file():
        raise RootfsMissing(f"the base rootfs is missing ({path}); build it once with "
                            f"`sudo bash {ROOTFS_SCRIPT}` (debootstrap, about a minute)")
    return path


def _sdk_files() -> list[tuple[str, Path]]:
    """(path in the image, source) of the SDK layer: state_transfer's .py files."""
    pkg = SOURCE_ROOT / "state_transfer"
    return [(f"{SITE_PACKAGES}/state_transfer/{p.relative_to(pkg).as_posix()}", p)
            for p in sorted(pkg.rglob("*.py")) if "__pycache__" not in p.parts]


def _workload_files() -> list[tuple[str, Path]]:
    """(path in the image, source) of the workloads layer: the workloads and the two package
    markers above them (nothing else of dataplane: it would pull in pyroute2)."""
    files = [SOURCE_ROOT / "dataplane" / "__init__.py",
             SOURCE_ROOT / "dataplane" / "lab" / "__init__.py",
             *sorted((SOURCE_ROOT / "dataplane" / "lab" / "workloads").glob("*.py"))]
    return [(f"{SITE_PACKAGES}/{p.relative_to(SOURCE_ROOT).as_posix()}", p) for p in files]


@functools.lru_cache(maxsize=8)
def reference_tag(cache: Path | None = None) -> str:
    """The tag of this source tree's reference images: the first 12 hex digits of a sha256
    over the rootfs stamp, every file copied into the images (path and content), the images'
    entry points and environment, and the build format. Cached for the process (a long-lived
    node agent runs the images of the source it was started from)."""
    h = hashlib.sha256()
    h.update(f"format {BUILD_FORMAT}\n".encode())
    h.update((rootfs_dir(cache) / ROOTFS_STAMP).read_bytes())
    for dest, src in _sdk_files() + _workload_files():
        data = src.read_bytes()
        h.update(f"\nfile {dest} {len(data)}\n".encode())
        h.update(data)
    for name in sorted(REFERENCE):
        h.update(f"\nimage {name} {REFERENCE[name][0]}\n".encode())
    for key in sorted(IMAGE_ENV):
        h.update(f"env {key}={IMAGE_ENV[key]}\n".encode())
    return h.hexdigest()[:12]


def _image_name(workload: str) -> str:
    """The image name (no tag) for a workload module, short name or image name."""
    if workload in REFERENCE or workload == BASE_IMAGE:
        return workload
    for name, (module, _) in REFERENCE.items():
        short = module.rpartition(".")[2]
        if workload in (module, short, short.replace("_", "-"), name.partition("/")[2]):
            return name
    if workload in ("python", "state_transfer"):
        return BASE_IMAGE
    known = ", ".join([BASE_IMAGE, *REFERENCE])
    raise ValueError(f"no reference image for {workload!r}; known: {known}")


def reference_image(workload: str, cache: Path | None = None) -> str:
    """``mobility/<name>:<tag>`` for a workload given by module (``dataplane.lab.workloads.echo``),
    short name (``echo``, ``session_probe``) or image name (``mobility/echo``)."""
    return f"{_image_name(workload)}:{reference_tag(cache)}"


def archive_name(image: str) -> str:
    """An image's archive file: ``mobility/session-probe`` -> ``session-probe.tar``."""
    return f"{image.rpartition('/')[2]}.tar"


def images_dir(cache: Path | None = None) -> Path:
    """Where this source tree's archives are: ``<cache>/images/<tag>``."""
    return cache_dir(cache) / "images" / reference_tag(cache)


def _expected(directory: Path) -> dict[str, Path]:
    return {name: directory / archive_name(name) for name in (BASE_IMAGE, *REFERENCE)}


def bundle_path(cache: Path | None = None) -> Path:
    """The one archive holding all six images (build it with :func:`build_reference`)."""
    return images_dir(cache) / BUNDLE


@contextlib.contextmanager
def _staged(files: list[tuple[str, Path]], scratch: Path) -> Iterator[Path]:
    """A directory holding ``files`` at their image paths, with the modes the rootfs has
    (0755 directories, 0644 files, root-owned when run as root), so the layer does not
    change the metadata of the rootfs directories it lands in."""
    with tempfile.TemporaryDirectory(dir=scratch, prefix="layer-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        for dest, src in files:
            target = root / dest
            for parent in reversed(target.relative_to(root).parents[:-1]):
                d = root / parent
                if not d.is_dir():
                    d.mkdir()
                    os.chmod(d, 0o755)
            shutil.copyfile(src, target)
            os.chmod(target, 0o644)
        # Byte code beside the sources, unchecked-hash (see scripts/base_rootfs.sh): a
        # container starts without compiling them. Every Python 3.11 reads 3.11 byte code.
        for dest, _ in files:
            if dest.endswith(".py"):
                py_compile.compile(str(root / dest), dfile="/" + dest, doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        for d in root.rglob("__pycache__"):
            os.chmod(d, 0o755)
            for f in d.iterdir():
                os.chmod(f, 0o644)
        yield root


def build_reference(cache: Path | None = None) -> dict[str, Path]:
    """Build this source tree's reference archives if missing; return image (with tag) ->
    archive. The bundle of all six, beside them, is :func:`bundle_path`: importing it is one
    stream of the rootfs instead of six (about 1.5 s instead of 6 s on the lab machine).

    The whole set is built in a temporary directory and renamed to ``<cache>/images/<tag>``,
    so a crash leaves all of it or none; a set already there is kept as it is. Sets of other
    tags older than an hour are deleted (a lab that imported them no longer needs them).
    Raises :class:`RootfsMissing` when the base rootfs is not built.
    """
    rootfs = rootfs_dir(cache)
    tag = reference_tag(cache)
    final = cache_dir(cache) / "images" / tag
    expected = _expected(final)
    if all(p.is_file() for p in expected.values()) and (final / BUNDLE).is_file():
        log.info("reference images %s: present in %s", tag, final)
        with contextlib.suppress(OSError):
            os.utime(final)  # in use: not stale for _prune of another source tree
        return _result(tag, final)
    final.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".build-{tag}-") as tmp:
        work = Path(tmp)
        out = work / "out"
        out.mkdir()
        os.chmod(out, 0o755)
        built = _expected(out)
        base = built[BASE_IMAGE]
        with _staged(_sdk_files(), work) as sdk:
            t = time.monotonic()
            oci.build_archive(base, name=f"{BASE_IMAGE}:{tag}", layers=[rootfs, sdk],
                              env=IMAGE_ENV, cmd=["python3"], workdir="/")
            log.info("image %s:%s built in %.1f s (%d MB)", BASE_IMAGE, tag,
                     time.monotonic() - t, base.stat().st_size >> 20)
        with _staged(_workload_files(), work) as workloads:
            for name, (module, _) in REFERENCE.items():
                t = time.monotonic()
                oci.build_archive(built[name], name=f"{name}:{tag}", layers=[workloads],
                                  base=base, entrypoint=["python3", "-m", module])
                log.info("image %s:%s built in %.1f s", name, tag, time.monotonic() - t)
        oci.bundle_archives(out / BUNDLE, list(built.values()))
        try:
            os.rename(out, final)
        except OSError:
            if not (final / BUNDLE).is_file():
                # A half set from an older builder: replace it.
                shutil.rmtree(final, ignore_errors=True)
                os.rename(out, final)
            else:
                log.info("reference images %s: built concurrently by another process", tag)
    log.info("reference images %s: built in %s in %.1f s", tag, final,
             time.monotonic() - started)
    _prune(final.parent, keep=tag)
    return _result(tag, final)


def _result(tag: str, directory: Path) -> dict[str, Path]:
    return {f"{name}:{tag}": path for name, path in _expected(directory).items()}


def _prune(images_root: Path, *, keep: str) -> None:
    now = time.time()
    for d in images_root.iterdir():
        if d.name == keep or not d.is_dir():
            continue
        hexname = len(d.name) == 12 and all(c in "0123456789abcdef" for c in d.name)
        stale_build = d.name.startswith(".build-")
        if (hexname or stale_build) and now - d.stat().st_mtime > STALE_TAG_S:
            log.info("removing old reference images %s", d)
            shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataplane.lab.images",
                                     description="Build the lab's reference container images.")
    parser.add_argument("command", choices=["build", "tag"],
                        help="build: make the archives if missing and print them; "
                             "tag: print this source tree's tag")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache directory (default $MOBILITY_CACHE or "
                             f"{DEFAULT_CACHE})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[images] %(message)s", stream=sys.stderr)
    try:
        if args.command == "tag":
            sys.stdout.write(reference_tag(args.cache) + "\n")
            return 0
        for name, path in build_reference(args.cache).items():
            sys.stdout.write(f"{name}\t{path}\n")
        sys.stdout.write(f"*\t{bundle_path(args.cache)}\n")
    except RootfsMissing as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
