"""Journals of deploys, chain deploys and removals: what a worker is doing, under a lease.

A deploy or a removal that dies with its worker would leave a half-made record (blocking the
name) and orphan pods. Each writes a journal entry first and keeps a short lease on it while
it runs; an entry whose lease ran out belongs to a dead worker, and the reaper finishes or
undoes it (:meth:`mobility.deploying.Deployer.reap_jobs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from mobility import keys
from mobility.models import Instance
from mobility.store.base import StoreBase, pack, unpack


@dataclass(frozen=True)
class Job:
    kind: str  # "deploy", "chain" or "remove"
    name: str  # the service's (or the chain's) name
    instance: Instance | None = None  # a deploy's planned instance
    links: tuple[str, ...] = field(default=())  # a deploy's links made so far

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name,
                "instance": self.instance.to_dict() if self.instance else None,
                "links": list(self.links)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(kind=str(d["kind"]), name=str(d["name"]),
                   instance=Instance.from_dict(d["instance"]) if d.get("instance") else None,
                   links=tuple(str(x) for x in d.get("links") or ()))


class JobStore(StoreBase):

    def put_job(self, job: Job, *, ttl_s: float) -> None:
        """Record (or update) the job and hold its lease for ``ttl_s``."""
        with self.r.pipeline() as p:
            p.set(keys.job(job.kind, job.name), pack(job.to_dict()))
            p.set(keys.job_lease(job.kind, job.name), "1", px=int(ttl_s * 1000))
            p.sadd(keys.JOBS, f"{job.kind}:{job.name}")
            p.execute()

    def refresh_job(self, kind: str, name: str, *, ttl_s: float) -> None:
        self.r.set(keys.job_lease(kind, name), "1", px=int(ttl_s * 1000))

    def end_job(self, kind: str, name: str) -> None:
        with self.r.pipeline() as p:
            p.delete(keys.job(kind, name), keys.job_lease(kind, name))
            p.srem(keys.JOBS, f"{kind}:{name}")
            p.execute()

    def lost_jobs(self) -> list[Job]:
        """Jobs whose lease ran out: their worker died."""
        out = []
        for member in self._names(keys.JOBS):
            kind, _, name = member.partition(":")
            if self.r.exists(keys.job_lease(kind, name)):
                continue
            raw = cast(bytes | None, self.r.get(keys.job(kind, name)))
            if raw is None:
                self.r.srem(keys.JOBS, member)
                continue
            out.append(Job.from_dict(unpack(raw)))
        return out
