"""The catalogue of images the lab's container runtime holds: what a deploy may name.

The runtime is the truth about what it can run; this catalogue is its copy in the registry,
written by whoever imports an image (the CLI, the orchestrator's import task, the stack at
start), so that the API can refuse an unknown image with a 4xx before anything is created,
without reaching the runtime itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from mobility import keys
from mobility.store.base import StoreBase, pack, unpack


@dataclass(frozen=True)
class ImageRecord:
    name: str
    digest: str
    size: int
    imported_at: float
    source: str  # "reference", "import" or "build"
    # from the image's config: what runs when a service names neither command nor args
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    archive: str = ""  # the kept archive it was imported from (written by us, not a caller)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "size": self.size,
                "imported_at": self.imported_at, "source": self.source,
                "entrypoint": list(self.entrypoint), "cmd": list(self.cmd),
                "archive": self.archive}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageRecord:
        return cls(name=str(d["name"]), digest=str(d["digest"]), size=int(d["size"]),
                   imported_at=float(d["imported_at"]), source=str(d["source"]),
                   entrypoint=tuple(d.get("entrypoint") or ()), cmd=tuple(d.get("cmd") or ()),
                   archive=str(d.get("archive") or ""))


class ImageStore(StoreBase):

    def put_image(self, image: ImageRecord) -> None:
        self.r.hset(keys.IMAGES, image.name, pack(image.to_dict()))

    def get_image(self, name: str) -> ImageRecord | None:
        raw = cast(bytes | None, self.r.hget(keys.IMAGES, name))
        return ImageRecord.from_dict(unpack(raw)) if raw else None

    def images(self) -> list[ImageRecord]:
        raw = cast(dict[bytes, bytes], self.r.hgetall(keys.IMAGES))
        return sorted((ImageRecord.from_dict(unpack(v)) for v in raw.values()),
                      key=lambda i: i.name)

    def delete_image(self, name: str) -> bool:
        return bool(self.r.hdel(keys.IMAGES, name))
