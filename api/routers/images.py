"""/v1/images: the images deploys may name (the lab's container runtime holds them).

An import is an upload: the archive is streamed to a file under the image directory as it
arrives (never held in memory; its own size cap, ``MOBILITY_IMAGE_MAX_BYTES``), after the
token check, and the orchestrator loads it into the runtime as an operation (202). The file
name is made here, never taken from the request.
"""

from __future__ import annotations

import os
import secrets
import tarfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel

from api.deps import RegistryDep, SettingsDep
from api.schemas import ERRORS, Accepted, OperationOut, answers
from mobility import workloads
from mobility.errors import Conflict, Invalid, NotFound
from mobility.store import ImageRecord
from workers import canvas

router = APIRouter(prefix="/v1/images", tags=["images"])

# mobility.workloads.IMAGE_REF, without its length look-ahead (max_length says it)
NAME_PATTERN = (r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")
ImageName = Annotated[str, PathParam(max_length=200, pattern=NAME_PATTERN,
                                     description="e.g. counter:1")]
TAR = {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}
# what the upload declares: any content type is read as the archive's bytes (the CLI sends
# application/x-tar); octet-stream is the type every client and tool can send
UPLOAD = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


class ImageOut(BaseModel):
    name: str
    digest: str
    size: int
    imported_at: float
    source: str
    entrypoint: list[str]
    cmd: list[str]

    @classmethod
    def of(cls, i: ImageRecord) -> ImageOut:
        return cls(name=i.name, digest=i.digest, size=i.size, imported_at=i.imported_at,
                   source=i.source, entrypoint=list(i.entrypoint), cmd=list(i.cmd))


def _name(name: str) -> str:
    if not workloads.IMAGE_REF.fullmatch(name):
        raise Invalid(f"image: {name!r} is not an image name like 'counter:1'")
    return workloads.normalize_image(name)


def _record(registry: RegistryDep, name: str) -> ImageRecord:
    record = registry.get_image(_name(name))
    if record is None:
        raise NotFound(f"image {name!r} is not imported")
    return record


@router.get("")
def list_images(registry: RegistryDep) -> list[ImageOut]:
    return [ImageOut.of(i) for i in registry.images()]


@router.get("/{name:path}/archive", responses={**answers(404), 200: {"content": TAR}},
            response_class=FileResponse)
def image_archive(registry: RegistryDep, name: ImageName) -> FileResponse:
    """The image as an OCI archive (what ``mobility image build --from`` builds on)."""
    record = _record(registry, name)
    path = Path(record.archive) if record.archive else None
    if path is None or not path.is_file():
        raise NotFound(f"image {name!r} has no archive kept (import it again)")
    return FileResponse(path, media_type="application/x-tar")


@router.get("/{name:path}", responses=answers(404))
def get_image(registry: RegistryDep, name: ImageName) -> ImageOut:
    return ImageOut.of(_record(registry, name))


@router.post("", status_code=202, responses=ERRORS,
             openapi_extra={"requestBody": {"required": True, "content": UPLOAD}})
async def import_image(request: Request, registry: RegistryDep, settings: SettingsDep,
                       response: Response,
                       source: Annotated[Literal["import", "build"], Query()] = "import",
                       ) -> Accepted:
    """Upload an OCI image archive or a ``docker save`` archive (``application/x-tar``);
    the import is an operation (202)."""
    incoming = Path(settings.image_dir) / "incoming"
    incoming.mkdir(parents=True, exist_ok=True, mode=0o700)
    upload_id = secrets.token_hex(8)
    path = incoming / f"{upload_id}.tar"
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                fh.write(chunk)
        if size == 0:
            raise Invalid("archive: the body is empty: send the archive (Content-Type: "
                          "application/x-tar)")
        if not _is_tar(path):
            raise Invalid("archive: the body is not a tar archive (an OCI image layout or "
                          "a `docker save` archive)")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    op = canvas.submit(registry, canvas.IMPORT_IMAGE, target=upload_id,
                       args=[upload_id, source])
    response.headers["Location"] = f"/v1/operations/{op.id}"
    return Accepted(operation=OperationOut.of(op))


def _is_tar(path: Path) -> bool:
    """The first header is a tar header (its checksum is right): what can be told before
    the orchestrator checks the whole archive."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            return tar.next() is not None
    except (tarfile.TarError, OSError):
        return False


@router.delete("/{name:path}", status_code=202, responses=ERRORS)
def delete_image(registry: RegistryDep, response: Response, name: ImageName) -> Accepted:
    """Remove an image; refused (409) while a service runs it."""
    record = _record(registry, name)
    users = [s.name for s in registry.services().values() if s.container.image == record.name]
    if users:
        raise Conflict(f"image {record.name!r} is used by {', '.join(sorted(users))}")
    op = canvas.submit(registry, canvas.REMOVE_IMAGE, target=record.name, args=[record.name])
    response.headers["Location"] = f"/v1/operations/{op.id}"
    return Accepted(operation=OperationOut.of(op))
