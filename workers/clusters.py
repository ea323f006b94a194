"""Cluster join and unjoin (what ``kubefedctl join``/``unjoin`` do), as orchestration tasks.

They run on the orchestration worker, the one place that talks to Kubernetes; the API only
sends them. Joining needs the KubeFed backend: the lab's clusters are made by ``mobility lab``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import yaml

from mobility.errors import Conflict, Invalid, MobilityError, Wire, to_wire
from mobility.settings import get_settings
from workers.app import app
from workers.canvas import JOIN_CLUSTER, UNJOIN_CLUSTER
from workers.composition import kubefed
from workers.moves import registry
from workers.operating import run_operation

if TYPE_CHECKING:
    from mobility.backends.kube.client import KubeClient


def _member(spec: Mapping[str, object]) -> KubeClient | None:
    from mobility.backends.kube.client import KubeClient

    raw = spec.get("kubeconfig")
    if not raw:
        return None
    try:
        doc = yaml.safe_load(raw) if isinstance(raw, str) else raw
    except yaml.YAMLError as exc:
        raise Invalid(f"kubeconfig is not YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise Invalid("kubeconfig must be a kubeconfig document (a mapping)")
    context = spec.get("context")
    return KubeClient.from_kubeconfig(doc, context=str(context) if context else None,
                                      name=str(spec["name"]))


def _need_kubefed() -> None:
    backend = get_settings().backend
    if backend != "kubefed":
        raise Conflict(f"joining and unjoining clusters needs MOBILITY_BACKEND=kubefed; this "
                       f"deployment runs the {backend!r} backend")


@app.task(name=JOIN_CLUSTER, soft_time_limit=180)
def join(op_id: str, spec: Mapping[str, object]) -> Wire:
    return run_operation(op_id, lambda: _join(spec))


def _join(spec: Mapping[str, object]) -> Wire:
    try:
        _need_kubefed()
        member = _member(spec)
        if member is None:
            raise Invalid("joining a cluster needs its kubeconfig")
        fed = kubefed(get_settings())
        name = str(spec["name"])
        fed.join(name=name, member=member)
        cluster = fed.cluster_record(name)
        registry().put_cluster(cluster)
    except MobilityError as exc:
        return to_wire(exc)
    return {"ok": True, "location": f"/v1/clusters/{cluster.name}"}


@app.task(name=UNJOIN_CLUSTER, soft_time_limit=180)
def unjoin(op_id: str, spec: Mapping[str, object]) -> Wire:
    return run_operation(op_id, lambda: _unjoin(spec))


def _unjoin(spec: Mapping[str, object]) -> Wire:
    try:
        _need_kubefed()
        name = str(spec["name"])
        running = [s.name for s in registry().services().values()
                   if s.instance and s.instance.cluster == name]
        if running:
            raise Conflict(f"cluster {name!r} still runs {running}; move them first")
        kubefed(get_settings()).unjoin(name=name, member=_member(spec))
        registry().delete_cluster(name)
    except MobilityError as exc:
        return to_wire(exc)
    return {"ok": True}
