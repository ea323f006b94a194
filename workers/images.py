"""Images in the lab's container runtime, and their catalogue in the registry.

:func:`load` is the one way an archive becomes runnable: check it (an OCI layout or a
``docker save`` archive, no path outside it), keep it under the image directory named by its
own digest (so the runtime, whose store lives in the lab's run directory, gets it back at
every start), import it into the runtime, and record each image it names in the catalogue
that deploys are checked against. The stack calls it at start for the reference images and
every kept archive; the API's uploads reach it as the ``images.import`` operation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path

from dataplane import images
from dataplane.containers import Containerd, ContainerdPaths
from dataplane.errors import DataplaneError
from dataplane.lab import topology
from mobility import workloads
from mobility.errors import FederationError, Invalid, NotFound, Wire
from mobility.settings import get_settings
from mobility.store import ImageRecord, ImageStore
from workers.app import app
from workers.canvas import IMPORT_IMAGE, REMOVE_IMAGE
from workers.moves import registry
from workers.operating import run_operation

log = logging.getLogger(__name__)

UPLOAD_ID = re.compile(r"[0-9a-f]{16}")


def runtime() -> Containerd:
    """The lab's containerd (the one the node agents run pods with)."""
    lab = get_settings().lab_name
    plan = topology.load_plan(lab)
    if plan is None:
        raise FederationError(f"lab {lab!r} is not up: no container runtime to import into")
    return ContainerdPaths(plan.run_dir).client(plan.name)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def keep(path: Path, image_dir: Path) -> Path:
    """The archive moved (or linked) under ``image_dir`` as ``<sha256>.tar``."""
    image_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    kept = image_dir / f"{_digest(path)}.tar"
    if not kept.exists():
        tmp = image_dir / f".{kept.name}.{os.getpid()}"
        try:
            os.link(path, tmp)
        except OSError:
            import shutil

            shutil.copyfile(path, tmp)
        os.replace(tmp, kept)
    return kept


def load(store: ImageStore, ctr: Containerd, archive: Path, *, source: str) -> list[ImageRecord]:
    """Import ``archive`` into ``ctr`` and catalogue what it holds; Invalid if it is no image
    archive, FederationError if the runtime refuses it."""
    try:
        info = images.inspect_archive(archive)
        configs = images.archive_configs(archive)
    except ValueError as exc:
        raise Invalid(f"archive: {exc}") from exc
    try:
        names = ctr.import_archive(archive)
        present = {i.name: i for i in ctr.images()}
    except DataplaneError as exc:
        raise FederationError(f"the container runtime refused the archive: {exc}") from exc
    records = []
    for name in names:
        held = present.get(name)
        config = configs.get(name) or (next(iter(configs.values())) if len(configs) == 1
                                       else images.ImageConfig())
        record = ImageRecord(name=name, digest=held.digest if held else "",
                             size=held.size if held else archive.stat().st_size,
                             imported_at=time.time(), source=source,
                             entrypoint=tuple(config.entrypoint), cmd=tuple(config.cmd),
                             archive=str(archive))
        store.put_image(record)
        records.append(record)
    log.info("imported %s from a %s archive (%s)", ", ".join(names) or "nothing", info.kind,
             archive.name)
    return records


def load_kept(store: ImageStore, ctr: Containerd, image_dir: Path) -> list[ImageRecord]:
    """Every archive kept under ``image_dir``, imported again (a fresh runtime at start)."""
    out: list[ImageRecord] = []
    if image_dir.is_dir():
        for path in sorted(image_dir.glob("*.tar")):
            try:
                out.extend(load(store, ctr, path, source="import"))
            except (Invalid, FederationError) as exc:
                log.error("kept image archive %s not loaded: %s", path.name, exc)
    return out


@app.task(name=IMPORT_IMAGE)
def import_image(op_id: str, upload_id: str, source: str = "import") -> Wire:
    return run_operation(op_id, lambda: _import(upload_id, source))


def _import(upload_id: str, source: str) -> Wire:
    if not UPLOAD_ID.fullmatch(upload_id) or source not in ("import", "build"):
        raise Invalid("not an upload of this API")
    image_dir = Path(get_settings().image_dir)
    upload = image_dir / "incoming" / f"{upload_id}.tar"
    if not upload.is_file():
        raise NotFound(f"upload {upload_id} is gone")
    try:
        kept = keep(upload, image_dir)
    finally:
        upload.unlink(missing_ok=True)
    try:
        records = load(registry(), runtime(), kept, source=source)
    except Invalid:
        kept.unlink(missing_ok=True)
        raise
    return {"ok": True, "images": [r.name for r in records]}


@app.task(name=REMOVE_IMAGE)
def remove_image(op_id: str, name: str) -> Wire:
    return run_operation(op_id, lambda: _remove(name))


def _remove(name: str) -> Wire:
    if not workloads.IMAGE_REF.fullmatch(name):
        raise Invalid(f"image: {name!r} is not an image name")
    reg = registry()
    record = reg.get_image(name)
    if record is None:
        raise NotFound(f"image {name!r} is not imported")
    try:
        runtime().remove_image(name)
    except DataplaneError as exc:
        raise FederationError(f"the container runtime did not remove {name}: {exc}") from exc
    reg.delete_image(name)
    # the archive goes too unless another catalogued image came from it
    if record.archive and record.source != "reference" and not any(
            i.archive == record.archive for i in reg.images()):
        Path(record.archive).unlink(missing_ok=True)
    return {"ok": True, "removed": name}
