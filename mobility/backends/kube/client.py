"""The small JSON client over the ``kubernetes`` package that every Kubernetes adapter uses.

One place maps HTTP and connection errors to the project's errors (:class:`KubeError`,
:class:`ClusterUnreachable`, both :class:`FederationError`, retryable or not) and retries 409
conflicts with tenacity; :func:`write_kubeconfig` writes the kubeconfigs tools and tests use.

An error says the method, the path, the status and the reason, never what the server sent: a
response body (a Status message, a proxy's error page) is logged at debug level only, because
errors travel on to API answers and a server a caller named may be anything. Kubeconfigs given
by callers never reach the ``kubernetes`` loader (it would run ``exec`` plugins and read
files): :meth:`KubeClient.from_credentials` builds the client from their checked, inline
credentials (:mod:`mobility.kubeconfigs`); :meth:`KubeClient.from_kubeconfig` is for the
operator's own kubeconfig only.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import http
import json
import logging
import os
import re
import ssl
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import urllib3
import yaml
from kubernetes import config as k8s_config
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from mobility.errors import ClusterUnreachable, FederationError, KubeError
from mobility.kubeconfigs import MemberCredentials

log = logging.getLogger(__name__)

Obj = dict[str, Any]
_STATUS_REASON = re.compile(r"^[A-Za-z]{1,64}$")  # a Kubernetes StatusReason: one CamelCase word

__all__ = ["ClusterUnreachable", "KubeClient", "KubeError", "Obj", "write_kubeconfig"]


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, KubeError) and exc.conflict


def _status_reason(status: int, text: str) -> str:
    """The reason of an error answer: the Status's ``reason`` when it is one CamelCase word (as
    Kubernetes sends: ``NotFound``, ``AlreadyExists``...), else the standard phrase of the
    status code. Never the server's own reason phrase or message: those are free text."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        reason = json.loads(text).get("reason")
        if isinstance(reason, str) and _STATUS_REASON.match(reason):
            return reason
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _transport_reason(exc: BaseException) -> str:
    """What went wrong on the way to a server, from the local side only.

    Made of exception types, errnos and TLS verification results; never of ``str()`` of a
    protocol error, which can carry what the server sent (a bad status line, say).
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed ({e.verify_message})"
        if isinstance(e, ssl.SSLError):
            return f"TLS error ({e.reason or type(e).__name__})"
        if isinstance(e, urllib3.exceptions.NameResolutionError):
            return "the host name does not resolve"
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno)
        # (urllib3's NewConnectionError is a ConnectTimeoutError: its cause says more)
        if isinstance(e, (TimeoutError, urllib3.exceptions.TimeoutError)) and not isinstance(
                e, urllib3.exceptions.NewConnectionError):
            return "timed out"
        reason = getattr(e, "reason", None)
        todo += [x for x in (reason, e.__cause__, e.__context__)
                 if isinstance(x, BaseException)]
    return f"connection failed ({type(exc).__name__})"


def _memfile(name: str, data: bytes) -> tuple[int, str]:
    """An anonymous in-memory file (never on a disk) and a path that opens it, for the client
    certificate and key: the TLS library reads those only from paths."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
    except OSError:
        os.close(fd)
        raise
    return fd, f"/proc/{os.getpid()}/fd/{fd}"


class KubeClient:
    """JSON over one cluster's API server, with the project's errors and bounded timeouts.

    The ``kubernetes`` package's typed APIs are untyped for mypy and differ between resource
    kinds; every call here is ``request(method, path, body)`` on plain dicts instead, so the
    adapters read like the REST API they drive. Every request carries a timeout: a partitioned
    cluster must fail a phase, not hang it.
    """

    def __init__(self, api: Any, *, name: str, timeout: float = 10.0) -> None:
        self.api = api
        self.name = name
        self.timeout = timeout

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Mapping[str, Any] | str | os.PathLike[str], *,
                        context: str | None = None, name: str | None = None,
                        timeout: float = 10.0) -> KubeClient:
        """A client for one context of a kubeconfig (a parsed dict or a file).

        Only for the operator's own kubeconfig (``MOBILITY_KUBECONFIG``, test fixtures): the
        ``kubernetes`` loader runs ``exec`` plugins and reads the files it names. Credentials a
        caller sent go through :meth:`from_credentials`.
        """
        if isinstance(kubeconfig, Mapping):
            doc = dict(kubeconfig)
        else:
            try:
                doc = yaml.safe_load(Path(kubeconfig).expanduser().read_text())
            except (OSError, yaml.YAMLError) as e:
                raise FederationError(f"cannot read kubeconfig {kubeconfig}: {e}") from e
        cfg = Configuration()
        load: Any = k8s_config.new_client_from_config_dict  # untyped in the package
        try:
            api = load(
                config_dict=doc, context=context, persist_config=False,
                client_configuration=cfg)
        except Exception as e:  # the loader raises ConfigException, KeyError, ValueError...
            raise FederationError(f"invalid kubeconfig (context {context!r}): {e}") from e
        cfg = api.configuration
        cfg.retries = 0  # retries are ours: a dead cluster must not cost four timeouts
        api = ApiClient(configuration=cfg)
        return cls(api, name=name or context or doc.get("current-context") or "cluster",
                   timeout=timeout)

    @classmethod
    def from_credentials(cls, creds: MemberCredentials, *, name: str,
                         timeout: float = 10.0) -> KubeClient:
        """A client from a caller's checked inline credentials; no kubeconfig loader involved.

        The ``Configuration`` is filled here, field by field: the https server, its CA (or the
        system's), the bearer token, and the client certificate and key in anonymous memory
        files that live as long as the client. TLS is always verified.
        """
        cfg = Configuration(host=creds.server, retries=0, verify_ssl=True,
                            ca_cert_data=creds.ca_data.decode() if creds.ca_data else None)
        if creds.token:
            cfg.api_key = {"authorization": f"Bearer {creds.token}"}
        fds: list[int] = []
        try:
            if creds.client_cert_data and creds.client_key_data:
                fd, cfg.cert_file = _memfile("kube-client-cert", creds.client_cert_data)
                fds.append(fd)
                fd, cfg.key_file = _memfile("kube-client-key", creds.client_key_data)
                fds.append(fd)
            client = cls(ApiClient(configuration=cfg), name=name, timeout=timeout)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        for fd in fds:  # closed with the configuration that names their paths
            weakref.finalize(cfg, os.close, fd)
        return client

    @classmethod
    def from_token(cls, endpoint: str, *, token: str, ca_data: bytes | None, name: str,
                   insecure: bool = False, timeout: float = 10.0) -> KubeClient:
        """A client from an endpoint, a bearer token and a CA bundle (what KubeFed stores)."""
        cfg = Configuration(host=endpoint.rstrip("/"),
                            api_key={"authorization": f"Bearer {token}"},
                            ca_cert_data=ca_data.decode() if ca_data else None,
                            verify_ssl=not insecure, retries=0)
        return cls(ApiClient(configuration=cfg), name=name, timeout=timeout)

    @property
    def endpoint(self) -> str:
        return str(self.api.configuration.host)

    @property
    def insecure(self) -> bool:
        return not bool(self.api.configuration.verify_ssl)

    def ca_data(self) -> bytes | None:
        """The CA bundle this client trusts, to hand on to KubeFed (``spec.caBundle``)."""
        cfg = self.api.configuration
        if cfg.ca_cert_data:
            data = cfg.ca_cert_data
            return data.encode() if isinstance(data, str) else bytes(data)
        if cfg.ssl_ca_cert:
            try:
                return Path(cfg.ssl_ca_cert).read_bytes()
            except OSError as e:
                raise FederationError(f"{self.name}: cannot read CA {cfg.ssl_ca_cert}: {e}") from e
        return None

    def request(self, method: str, path: str, *, body: Obj | None = None,
                query: Mapping[str, str] | None = None, timeout: float | None = None) -> Obj:
        """One API call; returns the decoded JSON body. Raises KubeError/ClusterUnreachable."""
        limit = self.timeout if timeout is None else max(0.2, timeout)
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            m, url, hdrs, payload, _ = self.api.param_serialize(
                method=method, resource_path=path, query_params=list((query or {}).items()),
                header_params=headers, body=body, auth_settings=["BearerToken"])
            resp = self.api.call_api(m, url, header_params=hdrs, body=payload,
                                     _request_timeout=(min(limit, 5.0), limit))
            raw = resp.read()
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as e:
            # ApiException with status 0: TLS and transport failures
            # not chained: the original's text may carry what the server sent (see the module)
            log.debug("%s: %s %s failed: %r", self.name, method, path, e)
            raise ClusterUnreachable(
                f"{self.name}: {method} {path}: {_transport_reason(e)}") from None
        status = int(resp.status)
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
        if not 200 <= status < 300:
            reason = _status_reason(status, text)
            log.debug("%s: %s %s: %s, body: %.2000s", self.name, method, path, status, text)
            raise KubeError(f"{self.name}: {method} {path}: {status} {reason}".rstrip(),
                            status=status, reason=reason)
        if not text:
            return {}
        try:
            return cast(Obj, json.loads(text))
        except ValueError:
            log.debug("%s: %s %s: not JSON: %.2000s", self.name, method, path, text)
            raise FederationError(f"{self.name}: {method} {path}: the answer is not JSON "
                                  f"({len(text)} characters)") from None

    def get(self, path: str, *, timeout: float | None = None) -> Obj | None:
        """The object at ``path``, or None when it does not exist."""
        try:
            return self.request("GET", path, timeout=timeout)
        except KubeError as e:
            if e.not_found:
                return None
            raise

    def create(self, collection: str, body: Obj) -> Obj | None:
        """Create ``body`` in ``collection``; None when it exists already (idempotent)."""
        try:
            return self.request("POST", collection, body=body)
        except KubeError as e:
            if e.already_exists:
                return None
            raise

    def delete(self, path: str, *, timeout: float | None = None) -> bool:
        """Delete the object at ``path``; False when it was not there (idempotent)."""
        try:
            self.request("DELETE", path, body={"propagationPolicy": "Background"},
                         timeout=timeout)
        except KubeError as e:
            if e.not_found:
                return False
            raise
        return True

    def update(self, path: str, mutate: Callable[[Obj], bool]) -> Obj | None:
        """Read, change, write back with the read ``resourceVersion``; 409s retried.

        ``mutate`` changes the object in place and returns whether it changed anything (no
        write when it did not). Returns the object as stored, or None when it does not exist.
        A lost race (409 Conflict) is retried with jittered backoff by tenacity; after the
        last attempt the KubeError is raised, marked retryable.
        """
        for attempt in Retrying(retry=retry_if_exception(_is_conflict),
                                stop=stop_after_attempt(10),
                                wait=wait_random_exponential(multiplier=0.02, max=0.5),
                                reraise=True):
            with attempt:
                obj = self.get(path)
                if obj is None:
                    return None
                if not mutate(obj):
                    return obj
                return self.request("PUT", path, body=obj)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def wait_gone(self, path: str, *, timeout: float, poll_s: float = 0.2) -> None:
        """Return once ``path`` no longer exists; FederationError (retryable) on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if self.get(path, timeout=max(0.5, min(self.timeout, remaining))) is None:
                return
            if remaining <= 0:
                raise FederationError(f"{self.name}: {path} still exists after {timeout}s",
                                      retryable=True)
            time.sleep(poll_s)


def write_kubeconfig(path: Path, *, clusters: Mapping[str, tuple[str, str, bytes]]) -> None:
    """A kubeconfig with one context per cluster: name -> (endpoint, token, CA PEM).

    For tools and tests that start clusters with static tokens; written 0600 atomically.
    """
    doc: Obj = {"apiVersion": "v1", "kind": "Config", "preferences": {},
                "clusters": [], "users": [], "contexts": [],
                "current-context": next(iter(clusters), "")}
    for name, (endpoint, token, ca) in clusters.items():
        doc["clusters"].append({"name": name, "cluster": {
            "server": endpoint, "certificate-authority-data": base64.b64encode(ca).decode()}})
        doc["users"].append({"name": name, "user": {"token": token}})
        doc["contexts"].append({"name": name, "context": {"cluster": name, "user": name}})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kubeconfig-")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(copy.deepcopy(doc), fh)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)

