"""Clusters, services, links, identity allocations and path health.

A service's ``moving`` field is not stored with it: it is read from the service's lock in the
same round trip, so it can never disagree with the lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from mobility import keys
from mobility.errors import Conflict, NotFound
from mobility.models import Cluster, Link, PathHealth, Service
from mobility.store.base import StoreBase, pack, unpack


class FleetStore(StoreBase):

    # --- clusters ---

    def put_cluster(self, cluster: Cluster) -> None:
        with self.r.pipeline() as p:
            p.set(keys.cluster(cluster.name), pack(cluster.to_dict()))
            p.sadd(keys.CLUSTERS, cluster.name)
            p.execute()

    def delete_cluster(self, name: str) -> None:
        with self.r.pipeline() as p:
            p.delete(keys.cluster(name))
            p.srem(keys.CLUSTERS, name)
            p.execute()

    def clusters(self) -> dict[str, Cluster]:
        names = self._names(keys.CLUSTERS)
        if not names:
            return {}
        raws = cast(list[bytes | None], self.r.mget([keys.cluster(n) for n in names]))
        return {
            n: Cluster.from_dict(unpack(raw)) for n, raw in zip(names, raws, strict=True) if raw
        }

    def get_cluster(self, name: str) -> Cluster | None:
        raw = cast(bytes | None, self.r.get(keys.cluster(name)))
        return Cluster.from_dict(unpack(raw)) if raw else None

    # --- services ---

    def put_service(self, service: Service, *, create: bool = False) -> None:
        blob = pack(service.to_dict())
        if create:
            if not self.r.set(keys.service(service.name), blob, nx=True):
                raise Conflict(f"service {service.name!r} already exists")
        else:
            self.r.set(keys.service(service.name), blob)
        self.r.sadd(keys.SERVICES, service.name)

    def get_service(self, name: str) -> Service | None:
        raw, owner = cast(
            list[bytes | None], self.r.mget([keys.service(name), keys.service_lock(name)])
        )
        if raw is None:
            return None
        svc = Service.from_dict(unpack(raw))
        svc.moving = owner.decode() if owner else None
        return svc

    def services(self) -> dict[str, Service]:
        result = {}
        for name in self._names(keys.SERVICES):
            svc = self.get_service(name)
            if svc is not None:
                result[name] = svc
        return result

    def update_service(self, name: str, fn: Callable[[Service], None]) -> Service:
        def apply(d: dict[str, Any]) -> dict[str, Any]:
            svc = Service.from_dict(d)
            fn(svc)
            return svc.to_dict()

        return Service.from_dict(self._update(keys.service(name), apply))

    def delete_service(self, name: str) -> None:
        with self.r.pipeline() as p:
            p.delete(keys.service(name))
            p.srem(keys.SERVICES, name)
            p.execute()

    # --- path health ---

    def put_health(self, service: str, health: PathHealth, *, ttl_s: int) -> None:
        self.r.set(keys.service_health(service), pack(health.to_dict()), ex=ttl_s)

    def get_health(self, service: str) -> PathHealth | None:
        raw = cast(bytes | None, self.r.get(keys.service_health(service)))
        return PathHealth.from_dict(unpack(raw)) if raw else None

    def count_reconcile_pass(self, node: str) -> int:
        """Count a finished reconcile pass of ``node`` (so a caller can wait for the next)."""
        return int(self.r.incr(keys.reconcile_passes(node)))

    def reconcile_passes(self, node: str) -> int:
        raw = cast(bytes | None, self.r.get(keys.reconcile_passes(node)))
        return int(raw) if raw else 0

    # --- links and allocations ---

    def put_link(self, link: Link) -> None:
        self.r.set(keys.link(link.id), pack(link.to_dict()))

    def get_link(self, link_id: str) -> Link:
        raw = cast(bytes | None, self.r.get(keys.link(link_id)))
        if raw is None:
            raise NotFound(f"link {link_id} does not exist")
        return Link.from_dict(unpack(raw))

    def delete_link(self, link_id: str) -> None:
        self.r.delete(keys.link(link_id))

    def links_of(self, service: Service) -> list[Link]:
        return [self.get_link(i) for i in service.links]

    def next_vni(self) -> int:
        """VNIs are never reused, so a stale device can never capture a new link's traffic."""
        return 1000 + int(self.r.incr(keys.VNI_SEQ))

    def next_link_block(self) -> int:
        return int(self.r.incr(keys.LINK_BLOCK_SEQ))

    def next_pod_index(self) -> int:
        return int(self.r.incr(keys.POD_SEQ))
