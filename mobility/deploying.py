"""Deploying and removing services, with the links to their peers.

A link's identity (VNI, MACs, addresses from 169.254.0.0/16) is allocated once, here, and
kept for the link's life: moves reuse it so peers never see a new address.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence

from mobility import chains, planning, workloads
from mobility.chains import Chain
from mobility.errors import Conflict, FederationError, Invalid, MobilityError, NotFound
from mobility.models import (
    IMAGE_WORKLOAD,
    ContainerSpec,
    Instance,
    Link,
    LinkEnd,
    Params,
    Service,
)
from mobility.ports import Federation, Wiring
from mobility.settings import Settings
from mobility.store import Job, Registry

log = logging.getLogger(__name__)

NAME = re.compile(r"^[a-z][a-z0-9-]{0,22}$")
LINK_NET = ipaddress.IPv4Network("169.254.0.0/16")
FIRST_BLOCK_OFFSET = 256  # 169.254.0.0/24 is reserved (RFC 3927); start at 169.254.1.0
MAX_BLOCKS = (LINK_NET.num_addresses - 2 * 256) // 4


def link_identity(block: int) -> tuple[tuple[str, str], tuple[str, str]]:
    """MAC and IP of both ends of the link numbered ``block`` (a /30 each)."""
    if not 1 <= block <= MAX_BLOCKS:
        raise Conflict("no link addresses left in 169.254.0.0/16")
    base = int(LINK_NET.network_address) + FIRST_BLOCK_OFFSET + 4 * (block - 1)
    mac = f"02:6d:{(block >> 16) & 0xFF:02x}:{(block >> 8) & 0xFF:02x}:{block & 0xFF:02x}"
    return (
        (f"{mac}:01", str(ipaddress.IPv4Address(base + 1))),
        (f"{mac}:02", str(ipaddress.IPv4Address(base + 2))),
    )


def _add_link(link_id: str) -> Callable[[Service], None]:
    def add(s: Service) -> None:
        if link_id not in s.links:
            s.links.append(link_id)

    return add


def _drop_link(link_id: str) -> Callable[[Service], None]:
    def drop(s: Service) -> None:
        if link_id in s.links:
            s.links.remove(link_id)

    return drop


def _set_routes(routes: list[dict[str, str]]) -> Callable[[Service], None]:
    def apply(s: Service) -> None:
        s.routes = [dict(r) for r in routes]

    return apply


class Deployer:
    def __init__(self, *, registry: Registry, federation: Federation, wiring: Wiring,
                 settings: Settings) -> None:
        self.registry = registry
        self.federation = federation
        self.wiring = wiring
        self.settings = settings

    # --- journals: a dead worker's half-done deploy or removal is finished by the reaper ---

    @contextlib.contextmanager
    def _journal(self, job: Job) -> Iterator[Callable[[Job], None]]:
        """Keep ``job`` journaled, its lease refreshed, while the body runs; the body may
        record progress through the function it gets. The entry goes when the body ends
        (done, or undone by its own error handling)."""
        ttl = self.settings.job_lease_ttl_s
        self.registry.put_job(job, ttl_s=ttl)
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(ttl / 4):
                try:
                    self.registry.refresh_job(job.kind, job.name, ttl_s=ttl)
                except Exception as exc:  # Redis unreachable: the next refresh may make it
                    log.warning("the %s of %s: journal lease refresh failed: %s",
                                job.kind, job.name, exc)

        t = threading.Thread(target=refresh, name=f"job-{job.kind}-{job.name}", daemon=True)
        t.start()
        try:
            yield lambda progress: self.registry.put_job(progress, ttl_s=ttl)
        finally:
            stop.set()
            t.join()
            self.registry.end_job(job.kind, job.name)

    def reap_jobs(self) -> list[str]:
        """Finish or undo what dead workers left half done: a deploy is undone (its pod, its
        link ends on the peers, its links and record go), a removal finished, a chain's
        deployed elements removed with its record. Returns what was done."""
        done = []
        for job in self.registry.lost_jobs():
            try:
                if job.kind == "deploy":
                    self._undo_lost_deploy(job)
                elif job.kind == "remove":
                    svc = self.registry.get_service(job.name)
                    if svc is not None:
                        self._remove(svc)
                elif job.kind == "chain":
                    chain = self.registry.get_chain(job.name)
                    for name in chain.services if chain else []:
                        svc = self.registry.get_service(name)
                        if svc is not None:
                            self._remove(svc)
                    self.registry.delete_chain(job.name)
            except MobilityError as exc:
                log.error("could not finish the %s of %s (retried): %s", job.kind, job.name, exc)
                continue
            self.registry.end_job(job.kind, job.name)
            log.warning("finished the %s of %s its worker left half done", job.kind, job.name)
            done.append(f"{job.kind}:{job.name}")
        return done

    def _undo_lost_deploy(self, job: Job) -> None:
        links = []
        for link_id in job.links:
            try:
                link = self.registry.get_link(link_id)
            except NotFound:
                continue
            peer = self.registry.get_service(link.peer_of(job.name).service)
            if peer is not None:
                links.append((link, peer))
        if job.instance is not None:
            self._undo(job.name, job.instance, links)
        else:
            self.registry.delete_service(job.name)

    def deploy(self, *, name: str, workload: str, params: Params, cluster: str,
               peers: list[str], start: bool = True, target: str | None = None,
               chain: str | None = None, faults: Sequence[str] = (),
               container: ContainerSpec | None = None) -> Service:
        """Deploy a service with a link to each peer.

        ``container`` (checked by :func:`workloads.check_container`) is a user's image with
        its command, environment, ports and state mode (``workload`` is then
        ``"image"``), or the resources of a built-in workload's container.

        ``start=False`` leaves the workload unstarted (a chain starts its client once every
        element has its routes); ``target`` overrides a client's destination (a chain's client
        sends to the server at the chain's far end, not to its first middlebox).
        """
        if not NAME.fullmatch(name):
            raise Invalid(f"service name {name!r}: lowercase letters, digits and '-', "
                          "starting with a letter, at most 23 characters")
        container = container or ContainerSpec()
        if workload == IMAGE_WORKLOAD:
            if container.image is None:
                raise Invalid("image: a service of workload 'image' names its image")
            if params:
                raise Invalid("params: a service with its own image takes 'command', 'args' "
                              "and 'env', not 'params'")
            record = self.registry.get_image(container.image)
            if record is None:
                known = ", ".join(i.name for i in self.registry.images()) or "none"
                raise Invalid(f"image: {container.image!r} is not imported (import it with "
                              f"'mobility image import FILE'; imported: {known})")
            if container.args and not container.command:
                # args replace the image's cmd only: its entrypoint stays the command
                container = dataclasses.replace(container, command=record.entrypoint)
            if not (container.command or container.args or record.entrypoint or record.cmd):
                raise Invalid(f"command: image {container.image!r} names no entrypoint or "
                              "cmd, so the service must give a 'command'")
        else:
            if container.image is not None:
                raise Invalid("image: a built-in workload runs its reference image")
            params = workloads.check(workload, params)
        clusters = self.registry.clusters()
        if cluster not in clusters:
            raise NotFound(f"cluster {cluster!r} does not exist (known clusters: "
                           f"{', '.join(sorted(clusters)) or 'none'})")
        services = self.registry.services()
        if name in services:
            raise Conflict(f"service {name!r} already exists")
        if len(set(peers)) != len(peers) or name in peers:
            raise Invalid("peers must be distinct services other than the service itself")
        peer_svcs = []
        for p in peers:
            peer = services.get(p)
            if peer is None:
                raise NotFound(f"peer service {p!r} does not exist")
            if peer.instance is None:
                raise Conflict(f"peer service {p!r} is not running")
            if peer.moving:
                raise Conflict(f"peer service {p!r} is moving (move {peer.moving}); try again "
                               "when it has ended")
            peer_svcs.append(peer)
        if workload in workloads.CLIENTS and len(peer_svcs) != 1:
            raise Invalid("a probe needs exactly one peer: the service it sends requests to")

        node = planning.choose_node(
            cluster=clusters[cluster],
            avoid={f"{p.instance.cluster}/{p.instance.node}" for p in peer_svcs if p.instance},
            load=planning.node_load(services.values()),
        )
        instance = Instance(cluster=cluster, node=node.name,
                            pod=f"{name}-{self.registry.next_pod_index()}")
        with self._journal(Job(kind="deploy", name=name, instance=instance)) as progress:
            return self._deploy(name=name, workload=workload, params=params, start=start,
                                target=target, chain=chain, instance=instance,
                                peer_svcs=peer_svcs, progress=progress, faults=faults,
                                container=container)

    def _deploy(self, *, name: str, workload: str, params: Params, start: bool,
                target: str | None, chain: str | None, instance: Instance,
                peer_svcs: list[Service], progress: Callable[[Job], None],
                faults: Sequence[str], container: ContainerSpec) -> Service:
        svc = Service(name=name, workload=workload, params=params, chain=chain,
                      container=container)
        self.registry.put_service(svc, create=True)

        links: list[tuple[Link, Service]] = []
        try:
            for i, peer in enumerate(peer_svcs, start=1):
                (mac_a, ip_a), (mac_b, ip_b) = link_identity(self.registry.next_link_block())
                link = Link(
                    id=f"{name}.{peer.name}", vni=self.registry.next_vni(),
                    ends=(LinkEnd(service=name, ifname=f"nsm-{i}", mac=mac_a, ip=ip_a),
                          LinkEnd(service=peer.name, ifname=f"nsm-{len(peer.links) + 1}",
                                  mac=mac_b, ip=ip_b)),
                )
                self.registry.put_link(link)
                links.append((link, peer))
                progress(Job(kind="deploy", name=name, instance=instance,
                             links=tuple(lk.id for lk, _ in links)))
            if workload in workloads.CLIENTS:
                link, peer = links[0]
                svc.params["target"] = target or (
                    f"{link.peer_of(name).ip}:{workloads.serving_port(peer)}")
            svc.links = [link.id for link, _ in links]
            self.registry.put_service(svc)

            self.federation.place(instance=instance, workload=workload, params=svc.params,
                                  start=False, container=container)
            for link, peer in links:
                assert peer.instance is not None
                self.wiring.create_end(link=link, service=name, instance=instance,
                                       peer_instance=peer.instance)
                self.wiring.create_end(link=link, service=peer.name, instance=peer.instance,
                                       peer_instance=instance)
                self.registry.update_service(peer.name, _add_link(link.id))
            if "pause:deploy" in faults:  # fault injection: hold with the pod placed
                self.registry.wait_pause_released(f"deploy-{name}", timeout=120)
            if start:
                self.federation.start(instance=instance, workload=workload, params=svc.params,
                                      container=container)
                self.federation.wait_ready(instance=instance,
                                           timeout=self.settings.ready_timeout_s)
        except Exception:
            log.exception("deploying %s failed; undoing", name)
            self._undo(name, instance, links)
            raise

        def running(s: Service) -> None:
            s.instance = instance

        return self.registry.update_service(name, running)

    def _undo(self, name: str, instance: Instance, links: list[tuple[Link, Service]]) -> None:
        for link, peer in links:
            try:
                if peer.instance is not None:
                    self.wiring.delete_end(link=link, service=peer.name, instance=peer.instance)
            except FederationError as exc:
                log.error("could not remove %s's end of %s: %s", peer.name, link.id, exc)
            self.registry.update_service(peer.name, _drop_link(link.id))
            self.registry.delete_link(link.id)
        try:
            self.federation.unplace(instance=instance)
        finally:
            self.registry.delete_service(name)

    def deploy_chain(self, chain: Chain, *, rate: float = 1000.0) -> list[Service]:
        """Deploy every element, server first, linking each to the next; route the far ends
        through the chain; start the client last, once every path exists."""
        chains.validate(chain)
        if self.registry.get_chain(chain.name) is not None:
            raise Conflict(f"chain {chain.name!r} already exists")
        existing = set(self.registry.services())
        taken = sorted(set(chain.services) & existing)
        if taken:
            raise Conflict(f"services {taken} already exist")
        with self._journal(Job(kind="chain", name=chain.name)):
            self.registry.put_chain(chain)
            return self._deploy_chain(chain, rate=rate)

    def _deploy_chain(self, chain: Chain, *, rate: float) -> list[Service]:
        deployed: list[str] = []
        try:
            elements = list(chain.elements)
            names = chain.services
            server = elements[-1]
            self.deploy(name=names[-1], workload=server.workload, params={},
                        cluster=server.cluster, peers=[], chain=chain.name)
            deployed.append(names[-1])
            for i in range(len(elements) - 2, -1, -1):
                e = elements[i]
                is_client = i == 0
                target = None
                if is_client:
                    last = self.registry.get_link(f"{names[-2]}.{names[-1]}")
                    target = f"{last.end_of(names[-1]).ip}:7000"
                self.deploy(name=names[i], workload=e.workload,
                            params={"rate": rate} if is_client else {}, cluster=e.cluster,
                            peers=[names[i + 1]], start=not is_client, target=target,
                            chain=chain.name)
                deployed.append(names[i])
            links = [self.registry.get_link(f"{names[i]}.{names[i + 1]}")
                     for i in range(len(names) - 1)]
            for svc_name, rs in chains.routes(names, links).items():
                svc = self.registry.update_service(svc_name, _set_routes(rs))
                assert svc.instance is not None
                self.wiring.set_routes(instance=svc.instance, routes=rs)
            client = self.registry.get_service(names[0])
            assert client is not None and client.instance is not None
            self.federation.start(instance=client.instance, workload=client.workload,
                                  params=client.params)
            self.federation.wait_ready(instance=client.instance,
                                       timeout=self.settings.ready_timeout_s)
        except Exception:
            log.exception("deploying chain %s failed; undoing", chain.name)
            for name in deployed:  # the client first: it is the last deployed
                try:
                    self.remove(name)
                except MobilityError as exc:
                    log.error("could not remove %s: %s", name, exc)
            self.registry.delete_chain(chain.name)
            raise
        return [s for s in (self.registry.get_service(n) for n in names) if s is not None]

    def remove_chain(self, name: str) -> None:
        chain = self.registry.get_chain(name)
        if chain is None:
            raise NotFound(f"chain {name!r} does not exist")
        moving = [s.name for s in (self.registry.get_service(n) for n in chain.services)
                  if s is not None and s.moving]
        if moving:
            raise Conflict(f"chain {name!r}: {moving} are moving; wait for the moves to end")
        for svc in chain.services:  # client first: it stops sending before the rest goes
            if self.registry.get_service(svc) is not None:
                self.remove(svc)
        self.registry.delete_chain(name)

    def remove(self, name: str) -> None:
        """Stop a service and remove its links from its peers. Refused while it moves."""
        svc = self.registry.get_service(name)
        if svc is None:
            raise NotFound(f"service {name!r} does not exist")
        owner = f"removal-of-{name}"
        if svc.moving or not self.registry.take_lock(name, owner,
                                                     ttl_s=self.settings.removal_lock_ttl_s):
            raise Conflict(f"service {name!r} is moving (move {svc.moving}); abort the move or "
                           "wait for it to end")
        # Holding the lock keeps node agents' reconcilers off this service and its peers'
        # ends towards it while they are taken apart; the journal lets the reaper finish it.
        try:
            with self._journal(Job(kind="remove", name=name)):
                self._remove(svc)
        finally:
            self.registry.release_lock(name, owner)

    def _remove(self, svc: Service) -> None:
        name = svc.name
        links = [(link, self.registry.get_service(link.peer_of(name).service))
                 for link in self.registry.links_of(svc)]
        if svc.instance is not None:
            self.federation.unplace(instance=svc.instance)
        for link, peer in links:
            if peer is not None:
                if peer.instance is not None:
                    self.wiring.delete_end(link=link, service=peer.name, instance=peer.instance)
                self.registry.update_service(peer.name, _drop_link(link.id))
            self.registry.delete_link(link.id)
        self.registry.delete_service(name)
