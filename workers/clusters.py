"""Cluster join and unjoin (what ``karmadactl`` or ``kubefedctl join``/``unjoin`` do), as
orchestration tasks.

They run on the orchestration worker, the one place that talks to Kubernetes; the API only
sends them. Joining needs a Kubernetes backend (Karmada or KubeFed): the lab's clusters are
made by ``mobility lab``.

A task's arguments are ``{"name", "credentials"}``: the id of the member's credentials, which
the API checked (:mod:`mobility.kubeconfigs`) and stored sealed
(:mod:`mobility.store.credentials`), never a kubeconfig or a secret. The member client is
built from those parsed fields (:meth:`KubeClient.from_credentials`); no kubeconfig a caller
sent ever reaches the ``kubernetes`` loader here. The credentials are read when the task
starts and deleted when it ends, whatever its outcome; those of a task that never started
expire (``api/routers/clusters.py``).

No Celery time limit (the threads pool enforces none, see ``workers/app.py``): a join or an
unjoin is bounded by the adapter's own timeouts (each request's, the token's, readiness, the
namespace's removal).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from mobility.errors import Conflict, Invalid, MobilityError, Wire, to_wire
from mobility.settings import get_settings
from mobility.store.credentials import Sealer
from workers.app import app
from workers.canvas import JOIN_CLUSTER, UNJOIN_CLUSTER
from workers.composition import membership
from workers.moves import registry
from workers.operating import run_operation

if TYPE_CHECKING:
    from mobility.backends.kube.client import KubeClient

log = logging.getLogger(__name__)


class CredentialsGone(MobilityError):
    """The stored credentials a task names are gone (expired before a worker took it)."""


def _member(spec: Mapping[str, object]) -> KubeClient | None:
    """The member client the task's stored credentials make, or None when it names none."""
    from mobility.backends.kube.client import KubeClient

    if "kubeconfig" in spec:  # an old or hand-made task: refused, never loaded
        raise Invalid("a cluster task names stored credentials, never a kubeconfig; join and "
                      "unjoin through the API, which checks the kubeconfig")
    ref = spec.get("credentials")
    if not ref:
        return None
    settings = get_settings()
    creds = registry().get_credentials(str(ref), sealer=Sealer.from_settings(settings))
    if creds is None:
        raise CredentialsGone("the credentials sent with this request expired before a worker "
                              "took it; send the request again")
    return KubeClient.from_credentials(creds, name=str(spec["name"]),
                                       timeout=settings.kube_timeout_s)


def _forget(spec: Mapping[str, object]) -> None:
    ref = spec.get("credentials")
    if ref:
        try:
            registry().delete_credentials(str(ref))
        except Exception:  # they expire anyway: a clean-up failure must not hide the answer
            log.warning("could not delete stored credentials %s; they expire", ref,
                        exc_info=True)


@app.task(name=JOIN_CLUSTER)
def join(op_id: str, spec: Mapping[str, object]) -> Wire:
    try:
        return run_operation(op_id, lambda: _join(spec))
    finally:
        _forget(spec)


def _join(spec: Mapping[str, object]) -> Wire:
    try:
        fed = membership(get_settings())
        member = _member(spec)
        if member is None:
            raise Invalid("joining a cluster needs its kubeconfig")
        name = str(spec["name"])
        fed.join(name=name, member=member)
        cluster = fed.cluster_record(name)
        registry().put_cluster(cluster)
    except MobilityError as exc:
        return to_wire(exc)
    return {"ok": True, "location": f"/v1/clusters/{cluster.name}"}


@app.task(name=UNJOIN_CLUSTER)
def unjoin(op_id: str, spec: Mapping[str, object]) -> Wire:
    try:
        return run_operation(op_id, lambda: _unjoin(spec))
    finally:
        _forget(spec)


def _unjoin(spec: Mapping[str, object]) -> Wire:
    try:
        fed = membership(get_settings())
        name = str(spec["name"])
        running = [s.name for s in registry().services().values()
                   if s.instance and s.instance.cluster == name]
        if running:
            raise Conflict(f"cluster {name!r} still runs {running}; move them first")
        fed.unjoin(name=name, member=_member(spec))
        registry().delete_cluster(name)
    except MobilityError as exc:
        return to_wire(exc)
    return {"ok": True}
