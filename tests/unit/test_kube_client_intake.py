"""The Kubernetes client's side of a caller's credentials and of what a server answers
(mobility.backends.kube.client), with no server: a stub stands in for the ``kubernetes`` API
client.

Aspects: ``KubeClient.from_credentials`` fills the ``Configuration`` itself (server, CA,
bearer token, client certificate and key in memory files that open as long as the client
lives), verifies TLS, and never calls the ``kubernetes`` kubeconfig loader; an error answer
becomes a KubeError that says the status and a reason (a Kubernetes StatusReason word or the
standard phrase) and never the body, the server's message or its own reason phrase; an answer
that is not JSON is said by its size; a transport failure says what went wrong locally, not
what the server sent (a bad status line).
"""

from __future__ import annotations

import gc
import http.client
import json
import os
from typing import Any

import pytest
import urllib3

from mobility.backends.kube import client as kube_client
from mobility.backends.kube.client import KubeClient
from mobility.errors import ClusterUnreachable, FederationError, KubeError
from mobility.kubeconfigs import MemberCredentials

MARKER = "remote-body-marker-7f3a"


class Resp:
    def __init__(self, status: int, body: bytes, reason: str = "") -> None:
        self.status, self.body, self.reason = status, body, reason

    def read(self) -> bytes:
        return self.body


class StubApi:
    """What KubeClient.request uses of ``kubernetes.client.ApiClient``."""

    def __init__(self, answer: Resp | BaseException) -> None:
        self.answer = answer

    def param_serialize(self, **kw: Any) -> tuple[str, str, dict[str, str], Any, None]:
        return kw["method"], kw["resource_path"], kw["header_params"], kw["body"], None

    def call_api(self, *args: Any, **kw: Any) -> Resp:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def test_from_credentials_fills_the_configuration_without_the_loader(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loader(*a: object, **kw: object) -> None:
        raise AssertionError("the kubeconfig loader was called")

    from kubernetes import config as k8s_config

    monkeypatch.setattr(k8s_config, "new_client_from_config_dict", no_loader)
    monkeypatch.setattr(k8s_config, "load_kube_config_from_dict", no_loader)
    monkeypatch.setattr(k8s_config.kube_config, "KubeConfigLoader", no_loader)
    creds = MemberCredentials(server="https://127.0.0.1:6443", ca_data=b"CA PEM", token="t0k",
                              client_cert_data=b"CERT PEM", client_key_data=b"KEY PEM")
    c = KubeClient.from_credentials(creds, name="member-x", timeout=3)
    cfg = c.api.configuration
    assert (c.endpoint, c.name, c.timeout, c.insecure) == ("https://127.0.0.1:6443",
                                                           "member-x", 3, False)
    assert cfg.api_key == {"authorization": "Bearer t0k"}
    assert cfg.retries == 0 and cfg.verify_ssl is True
    assert c.ca_data() == b"CA PEM"
    assert not cfg.cert_file.startswith(("/tmp", "/var")), "the certificate went to a disk"
    with open(cfg.cert_file, "rb") as fh:
        assert fh.read() == b"CERT PEM"
    with open(cfg.key_file, "rb") as fh:
        assert fh.read() == b"KEY PEM"
    path = cfg.key_file
    del c, cfg
    gc.collect()
    assert not os.path.exists(path), "the key's memory file outlived its client"


def test_from_credentials_with_a_token_only() -> None:
    c = KubeClient.from_credentials(MemberCredentials(server="https://k.example", token="t"),
                                    name="m")
    cfg = c.api.configuration
    assert cfg.cert_file is None and cfg.key_file is None and cfg.ca_cert_data is None
    assert c.ca_data() is None


@pytest.mark.parametrize(("status", "body", "reason", "said"), [
    (500, f"<html>{MARKER}</html>".encode(), f"Oops {MARKER}", "500 Internal Server Error"),
    (403, json.dumps({"kind": "Status", "reason": "Forbidden",
                      "message": f"user cannot {MARKER}"}).encode(), MARKER, "403 Forbidden"),
    (409, json.dumps({"kind": "Status", "reason": "AlreadyExists",
                      "message": MARKER}).encode(), "", "409 AlreadyExists"),
    (422, json.dumps({"reason": f"Not one word {MARKER}"}).encode(), "",
     "422 Unprocessable Entity"),
    (599, MARKER.encode(), MARKER, "599"),
])
def test_an_error_answer_says_status_and_reason_never_the_body(
        status: int, body: bytes, reason: str, said: str) -> None:
    c = KubeClient(StubApi(Resp(status, body, reason)), name="m")
    with pytest.raises(KubeError) as err:
        c.request("GET", "/api/v1/namespaces")
    assert str(err.value) == f"m: GET /api/v1/namespaces: {said}"
    assert MARKER not in str(err.value) and MARKER not in repr(err.value)
    assert err.value.status == status
    assert err.value.__cause__ is None


def test_kubernetes_reasons_still_drive_the_client() -> None:
    exists = json.dumps({"kind": "Status", "reason": "AlreadyExists"}).encode()
    c = KubeClient(StubApi(Resp(409, exists)), name="m")
    assert c.create("/api/v1/namespaces", {"metadata": {"name": "x"}}) is None
    assert KubeClient(StubApi(Resp(404, b"")), name="m").get("/x") is None


def test_an_answer_that_is_not_json_is_said_by_its_size() -> None:
    body = f"<html>{MARKER}</html>"
    c = KubeClient(StubApi(Resp(200, body.encode())), name="m")
    with pytest.raises(FederationError) as err:
        c.request("GET", "/version")
    assert MARKER not in str(err.value)
    assert f"not JSON ({len(body)} characters)" in str(err.value)


def test_a_transport_failure_never_quotes_the_server() -> None:
    bad_line = urllib3.exceptions.ProtocolError(
        "Connection aborted.", http.client.BadStatusLine(f"HTTP/1.1 {MARKER}"))
    c = KubeClient(StubApi(bad_line), name="m")
    with pytest.raises(ClusterUnreachable) as err:
        c.request("GET", "/version")
    assert MARKER not in str(err.value)
    assert str(err.value) == "m: GET /version: connection failed (ProtocolError)"
    connecting = urllib3.exceptions.NewConnectionError(None, "refused")  # type: ignore[arg-type]
    connecting.__cause__ = ConnectionRefusedError(111, "Connection refused")
    refused = urllib3.exceptions.MaxRetryError(None, "/version", connecting)  # type: ignore[arg-type]
    with pytest.raises(ClusterUnreachable, match="Connection refused"):
        KubeClient(StubApi(refused), name="m").request("GET", "/version")
    with pytest.raises(ClusterUnreachable, match="timed out"):
        KubeClient(StubApi(TimeoutError()), name="m").request("GET", "/version")


def test_the_transport_reason_reads_tls_errors() -> None:
    import ssl

    err = ssl.SSLCertVerificationError(1, "x")
    err.verify_message = "unable to get local issuer certificate"
    assert kube_client._transport_reason(err) == (
        "TLS certificate verification failed (unable to get local issuer certificate)")
