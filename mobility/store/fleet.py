"""Clusters, services, links, identity allocations and path health.

A service's ``moving`` field is not stored with it: it is read from the service's lock in the
same round trip, so it can never disagree with the lock.

Each node has an index, the set of the services placed on it (``keys.node_services``): every
write of a service record changes it in the same transaction, so it can never disagree with
the placements, and a node agent reads its own node's share (then those services' links and
peers, by name) instead of every service. A link write needs no index change: which node a
link concerns follows from its services' placements, and the agent reaches a link through
its service's record. A registry written before the index existed has none until
:meth:`FleetStore.rebuild_node_index`, which the first write of a service runs (each write
checks, in its transaction, that the index is built); until then readers fall back to the
scan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

from redis.client import Pipeline
from redis.exceptions import WatchError

from mobility import keys
from mobility.errors import Conflict, NotFound
from mobility.models import Cluster, Instance, Link, PathHealth, Service
from mobility.store.base import StoreBase, pack, unpack


def _placement(raw: bytes | None) -> Instance | None:
    """The instance a stored service record names (None: no record, or not placed)."""
    return None if raw is None else Service.from_dict(unpack(raw)).instance


def _reindex(pipe: Pipeline, name: str, *, before: Instance | None,
             after: Instance | None) -> None:
    """Queue the index's change for ``name`` placed at ``before`` and now at ``after``."""
    old = None if before is None else (before.cluster, before.node)
    new = None if after is None else (after.cluster, after.node)
    if old is not None and old != new:
        pipe.srem(keys.node_services(*old), name)
    if new is not None:
        pipe.sadd(keys.node_services(*new), name)


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

    def clusters_named(self, names: Iterable[str]) -> dict[str, Cluster]:
        """The clusters of ``names`` that exist, in one round trip."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        raws = cast(list[bytes | None], self.r.mget([keys.cluster(n) for n in wanted]))
        return {n: Cluster.from_dict(unpack(raw)) for n, raw in zip(wanted, raws, strict=True)
                if raw is not None}

    def get_cluster(self, name: str) -> Cluster | None:
        raw = cast(bytes | None, self.r.get(keys.cluster(name)))
        return Cluster.from_dict(unpack(raw)) if raw else None

    # --- services ---

    def put_service(self, service: Service, *, create: bool = False) -> None:
        """Write ``service`` (refused when ``create`` and it exists); its node's index moves
        with its placement in the same transaction."""
        key = keys.service(service.name)
        blob = pack(service.to_dict())
        with self.r.pipeline() as pipe:
            while True:
                try:
                    raw = self._watch_indexed(pipe, key)
                    if create and raw is not None:
                        raise Conflict(f"service {service.name!r} already exists")
                    pipe.multi()
                    pipe.set(key, blob)
                    pipe.sadd(keys.SERVICES, service.name)
                    _reindex(pipe, service.name, before=_placement(raw),
                             after=service.instance)
                    pipe.execute()
                    return
                except WatchError:
                    continue

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
        """Every service (by name, sorted), each with its ``moving``: two round trips."""
        return self.services_named(self._names(keys.SERVICES))

    def services_named(self, names: Iterable[str]) -> dict[str, Service]:
        """The services of ``names`` that exist (each with its ``moving``), in one round trip;
        what :meth:`get_service` gives for each, without a round trip per service."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        raws = cast(list[bytes | None], self.r.mget(
            [k for n in wanted for k in (keys.service(n), keys.service_lock(n))]))
        result = {}
        for i, name in enumerate(wanted):
            raw, owner = raws[2 * i], raws[2 * i + 1]
            if raw is not None:
                svc = Service.from_dict(unpack(raw))
                svc.moving = owner.decode() if owner else None
                result[name] = svc
        return result

    def update_service(self, name: str, fn: Callable[[Service], None]) -> Service:
        """Change the service with ``fn`` under WATCH (as ``StoreBase._update``), its node's
        index moving with its placement in the same transaction."""
        key = keys.service(name)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    raw = self._watch_indexed(pipe, key)
                    if raw is None:
                        raise NotFound(f"{key} does not exist")
                    svc = Service.from_dict(unpack(raw))
                    before = svc.instance
                    fn(svc)
                    pipe.multi()
                    pipe.set(key, pack(svc.to_dict()))
                    _reindex(pipe, name, before=before, after=svc.instance)
                    pipe.execute()
                    return Service.from_dict(svc.to_dict())  # as stored: no ``moving``
                except WatchError:
                    continue

    def delete_service(self, name: str) -> None:
        key = keys.service(name)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    raw = self._watch_indexed(pipe, key)
                    pipe.multi()
                    pipe.delete(key)
                    pipe.srem(keys.SERVICES, name)
                    _reindex(pipe, name, before=_placement(raw), after=None)
                    pipe.execute()
                    return
                except WatchError:
                    continue

    # --- the per-node index ---

    def node_index(self, cluster: str, node: str) -> list[str] | None:
        """The services placed on ``cluster``/``node`` (sorted), from its index; None while the
        registry has no index yet (one written before it existed: see
        :meth:`rebuild_node_index`), when only a scan of every service can tell."""
        with self.r.pipeline(transaction=False) as p:
            p.exists(keys.NODE_INDEX_BUILT)
            p.smembers(keys.node_services(cluster, node))
            built, members = p.execute()
        if not built:
            return None
        return sorted(m.decode() for m in cast(set[bytes], members))

    def rebuild_node_index(self) -> dict[tuple[str, str], set[str]]:
        """Build every node's index from a scan of every service, in one transaction (retried
        when a service changes meanwhile), and mark the index built; returns it.

        The migration of a registry written before the index existed. Once built, every write
        of a placement keeps it (in its own transaction), so this never has to run again.
        """
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(keys.SERVICES, keys.CLUSTERS)  # type: ignore[no-untyped-call]
                    names = sorted(n.decode() for n in cast(
                        set[bytes], pipe.smembers(keys.SERVICES)))
                    svc_keys = [keys.service(n) for n in names]
                    if svc_keys:
                        pipe.watch(*svc_keys)  # type: ignore[no-untyped-call]
                    raws = cast(list[bytes | None], pipe.mget(svc_keys)) if svc_keys else []
                    index: dict[tuple[str, str], set[str]] = {}
                    for name, raw in zip(names, raws, strict=True):
                        inst = _placement(raw)
                        if inst is not None:
                            index.setdefault((inst.cluster, inst.node), set()).add(name)
                    stale = set(index)
                    cnames = [n.decode() for n in cast(set[bytes],
                                                       pipe.smembers(keys.CLUSTERS))]
                    craws = cast(list[bytes | None], pipe.mget(
                        [keys.cluster(n) for n in cnames])) if cnames else []
                    for craw in craws:
                        if craw is not None:
                            c = Cluster.from_dict(unpack(craw))
                            stale |= {(c.name, n.name) for n in c.nodes}
                    pipe.multi()
                    for cluster, node in sorted(stale):
                        pipe.delete(keys.node_services(cluster, node))
                    for (cluster, node), members in index.items():
                        pipe.sadd(keys.node_services(cluster, node), *sorted(members))
                    pipe.set(keys.NODE_INDEX_BUILT, b"1")
                    pipe.execute()
                    return index
                except WatchError:
                    continue

    def ensure_node_index(self) -> bool:
        """Build the index if the registry has none yet; True if it built it. For a writer's
        start (the orchestrator's), so agents stop scanning before the first write."""
        if self.r.exists(keys.NODE_INDEX_BUILT):
            return False
        self.rebuild_node_index()
        return True

    def _watch_indexed(self, pipe: Pipeline, key: str) -> bytes | None:
        """WATCH ``key`` and the index's mark, building the index first if the registry has
        none (one from before it, or emptied); returns ``key``'s value. Every write of a
        service checks the mark in its own transaction, so while the mark stands every
        placement written is in the index."""
        while True:
            pipe.watch(key, keys.NODE_INDEX_BUILT)  # type: ignore[no-untyped-call]
            raw, built = cast(list[bytes | None], pipe.mget(key, keys.NODE_INDEX_BUILT))
            if built is not None:
                return raw
            pipe.unwatch()
            self.rebuild_node_index()

    # --- path health ---

    def put_health(self, service: str, health: PathHealth, *, ttl_s: int) -> None:
        self.r.set(keys.service_health(service), pack(health.to_dict()), ex=ttl_s)

    def get_health(self, service: str) -> PathHealth | None:
        raw = cast(bytes | None, self.r.get(keys.service_health(service)))
        return PathHealth.from_dict(unpack(raw)) if raw else None

    def healths_named(self, services: Iterable[str]) -> dict[str, PathHealth]:
        """The path health of each of ``services`` that has one, in one round trip."""
        wanted = sorted(set(services))
        if not wanted:
            return {}
        raws = cast(list[bytes | None],
                    self.r.mget([keys.service_health(n) for n in wanted]))
        return {n: PathHealth.from_dict(unpack(raw))
                for n, raw in zip(wanted, raws, strict=True) if raw}

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

    def links_named(self, link_ids: Iterable[str]) -> dict[str, Link]:
        """The links of ``link_ids`` that exist, in one round trip."""
        wanted = sorted(set(link_ids))
        if not wanted:
            return {}
        raws = cast(list[bytes | None], self.r.mget([keys.link(i) for i in wanted]))
        return {i: Link.from_dict(unpack(raw)) for i, raw in zip(wanted, raws, strict=True)
                if raw is not None}

    def links_of(self, service: Service) -> list[Link]:
        return [self.get_link(i) for i in service.links]

    def next_vni(self) -> int:
        """VNIs are never reused, so a stale device can never capture a new link's traffic."""
        return 1000 + int(self.r.incr(keys.VNI_SEQ))

    def next_link_block(self) -> int:
        return int(self.r.incr(keys.LINK_BLOCK_SEQ))

    def next_pod_index(self) -> int:
        return int(self.r.incr(keys.POD_SEQ))
