"""Kubeconfigs that callers send (to join or unjoin a cluster), checked before anything uses them.

A kubeconfig is code as much as data: ``users[].exec`` and ``auth-provider`` run commands,
``tokenFile`` and every file-path field read files of whoever loads it, ``proxy-url`` and the
``server`` choose where requests (with credentials) go. So a caller's kubeconfig never reaches
the ``kubernetes`` package's loader. :func:`parse` reads it here, with an allow-list:

- accepted: ``clusters[].cluster.server`` as a plain ``https://host[:port]`` URL (no path,
  query, fragment or user info), ``certificate-authority-data``, and per user ``token``,
  ``client-certificate-data`` with ``client-key-data``; names, contexts (``cluster``, ``user``,
  ``namespace``), ``current-context``, ``preferences`` and ``extensions``, which carry nothing
  that is used;
- refused, naming the field (``users[0].user.exec: not allowed ...``): ``exec``,
  ``auth-provider``, ``tokenFile``, every file path (``certificate-authority``,
  ``client-certificate``, ``client-key``), ``proxy-url``, ``insecure-skip-tls-verify: true``,
  basic auth, impersonation, any other scheme than https, and any field this module does not
  know. The whole document is checked, not only the context used: a refused entry is refused
  wherever it is, so the answer does not depend on which context is picked.

What comes out is :class:`MemberCredentials`: the server, the CA and the inline credentials of
the one context chosen, parsed and checked (base64 decoded, PEM certificates and an
unencrypted key that load, a token that can go in a header). Its ``repr`` never shows a
secret. Error messages name fields and never quote the document back (it holds secrets).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from mobility.errors import Invalid

__all__ = ["MAX_PROBLEMS", "MemberCredentials", "parse"]

MAX_PROBLEMS = 10  # named in one answer; the rest are summed up
MAX_TOKEN_CHARS = 16384
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no space: it goes in a header
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

# Per section, what may appear: field -> how it is read. Anything else is refused.
_TOP = {"apiVersion", "kind", "clusters", "users", "contexts", "current-context",
        "preferences", "extensions"}
_CLUSTER_OK = {"server", "certificate-authority-data", "disable-compression", "extensions",
               "insecure-skip-tls-verify"}
_USER_OK = {"token", "client-certificate-data", "client-key-data", "extensions"}
_CONTEXT_OK = {"cluster", "user", "namespace", "extensions"}
# Known fields refused on purpose, and why (said in the answer).
_REFUSED = {
    "certificate-authority": "a file path; give certificate-authority-data",
    "proxy-url": "requests go to the server directly",
    "tls-server-name": "the server's certificate must match its URL",
    "exec": "it would run a command on the orchestrator; give token, or "
            "client-certificate-data and client-key-data",
    "auth-provider": "it would run a plugin on the orchestrator; give token, or "
                     "client-certificate-data and client-key-data",
    "tokenFile": "a file path; give the token itself in token",
    "client-certificate": "a file path; give client-certificate-data",
    "client-key": "a file path; give client-key-data",
    "username": "basic auth; give a token or a client certificate",
    "password": "basic auth; give a token or a client certificate",
    "as": "impersonation is not supported",
    "as-uid": "impersonation is not supported",
    "as-groups": "impersonation is not supported",
    "as-user-extra": "impersonation is not supported",
}


@dataclass(frozen=True)
class MemberCredentials:
    """Where a cluster's API server is and how to prove who we are there; inline only.

    ``server`` is a checked ``https://host[:port]``; ``ca_data`` the PEM CA bundle to trust
    (None: the system's); ``token`` and/or ``client_cert_data`` with ``client_key_data``.
    """

    server: str
    ca_data: bytes | None = None
    token: str | None = None
    client_cert_data: bytes | None = None
    client_key_data: bytes | None = None

    def __repr__(self) -> str:
        def shown(value: object) -> str:
            return "<hidden>" if value else "None"

        ca = "<pem>" if self.ca_data else "None"
        return (f"MemberCredentials(server={self.server!r}, ca_data={ca}, "
                f"token={shown(self.token)}, client_cert_data={shown(self.client_cert_data)}, "
                f"client_key_data={shown(self.client_key_data)})")

    __str__ = __repr__

    def to_dict(self) -> dict[str, Any]:
        return {"server": self.server, "ca_data": self.ca_data, "token": self.token,
                "client_cert_data": self.client_cert_data,
                "client_key_data": self.client_key_data}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemberCredentials:
        def data(key: str) -> bytes | None:
            value = d.get(key)
            return bytes(value) if value else None

        token = d.get("token")
        return cls(server=str(d["server"]), ca_data=data("ca_data"),
                   token=str(token) if token else None,
                   client_cert_data=data("client_cert_data"),
                   client_key_data=data("client_key_data"))


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: a kubeconfig has no use for them, and they are
    how a small document becomes a huge one ("billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasRefused
        return super().compose_node(parent, index)


class _AliasRefused(Exception):
    pass


class _Problems:
    """The refusals found so far, each "field: what is wrong"."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def raise_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_PROBLEMS]
        more = len(self.items) - len(shown)
        tail = f"; and {more} more" if more else ""
        raise Invalid("; ".join(shown) + tail)


def _load(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader: no Python objects
    except _AliasRefused:
        raise Invalid("kubeconfig: YAML aliases are not allowed") from None
    except RecursionError:
        raise Invalid("kubeconfig: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:  # said without the snippet: it may hold a secret
        mark = exc.problem_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise Invalid(f"kubeconfig: not valid YAML{at}") from None
    except yaml.YAMLError:
        raise Invalid("kubeconfig: not valid YAML") from None


def _entries(doc: Mapping[str, Any], section: str, inner: str,
             problems: _Problems) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(path, name, body) of each entry of ``section`` (``clusters``: ``cluster``...)."""
    items = doc.get(section)
    if items is None:
        return
    if not isinstance(items, list):
        problems.add(section, "must be a list")
        return
    for i, item in enumerate(items):
        where = f"{section}[{i}]"
        if not isinstance(item, Mapping):
            problems.add(where, "must be a mapping")
            continue
        for key in item:
            if key not in ("name", inner, "extensions"):
                problems.add(f"{where}.{key}", "not supported")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            problems.add(f"{where}.name", "required (a string)")
            name = ""
        body = item.get(inner)
        if not isinstance(body, Mapping):
            problems.add(f"{where}.{inner}", "required (a mapping)")
            continue
        yield f"{where}.{inner}", name, body


def _fields(where: str, body: Mapping[str, Any], allowed: set[str],
            problems: _Problems) -> None:
    for key in body:
        if not isinstance(key, str):
            problems.add(where, "field names must be strings")
        elif key in _REFUSED:
            problems.add(f"{where}.{key}", f"not allowed ({_REFUSED[key]})")
        elif key not in allowed:
            problems.add(f"{where}.{key}", "not supported")


def _b64(where: str, value: Any, problems: _Problems) -> bytes | None:
    if not isinstance(value, str) or not value:
        problems.add(where, "must be base64 text")
        return None
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        problems.add(where, "not valid base64")
        return None


def _certificates(where: str, value: Any, problems: _Problems) -> bytes | None:
    data = _b64(where, value, problems)
    if data is None:
        return None
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        problems.add(where, "not PEM certificates")
        return None
    return data


def _private_key(where: str, value: Any, problems: _Problems) -> bytes | None:
    data = _b64(where, value, problems)
    if data is None:
        return None
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        problems.add(where, "an encrypted key is not supported")
        return None
    except (ValueError, UnsupportedAlgorithm):
        problems.add(where, "not a PEM private key (or not one of a supported kind)")
        return None
    return data


def _host(host: str, *, bracketed: bool) -> str | None:
    """What is wrong with a URL's host (lower case, IPv6 without its brackets), or None."""
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    if bracketed:
        try:
            addr = ipaddress.IPv6Address(host)
        except ValueError:
            return "not a valid IPv6 address"
    else:
        try:
            addr = ipaddress.IPv4Address(host)
        except ValueError:
            labels = host.removesuffix(".").split(".")
            if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
                return "not a valid host name"
            if labels[-1].isdigit() or labels[-1].startswith("0x"):
                # "0x7f.1", "2130706433": names the resolver reads as IPv4 addresses
                return "not a valid host name (write an IPv4 address as a.b.c.d)"
            return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_unspecified or addr.is_multicast or addr.is_link_local:
        return "not allowed (an unspecified, multicast or link-local address)"
    return None


def _server_url(where: str, value: Any, problems: _Problems) -> str | None:
    """The server as ``https://host[:port]``, or None (the problem added)."""
    if not isinstance(value, str) or not value:
        problems.add(where, "required (an https URL)")
        return None
    if any(not 0x21 <= ord(c) <= 0x7e or c in "\\%" for c in value):
        problems.add(where, "must be a plain https URL (no spaces, escapes or "
                            "non-ASCII characters)")
        return None
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        problems.add(where, "not a valid URL")
        return None
    if url.scheme.lower() != "https":
        problems.add(where, "must be an https URL (http and other schemes are not allowed)")
        return None
    if "@" in url.netloc:
        problems.add(where, "must not carry user info")
        return None
    if url.path not in ("", "/") or url.query or url.fragment or value.endswith(("?", "#")):
        problems.add(where, "must be https://host[:port], with no path, query or fragment")
        return None
    host = url.hostname or ""
    bracketed = url.netloc.startswith("[")
    wrong = _host(host, bracketed=bracketed) if host else "has no host"
    if wrong:
        problems.add(where, wrong)
        return None
    if port is not None and not 0 < port < 65536:
        problems.add(where, "port out of range")
        return None
    shown = f"[{host}]" if bracketed else host
    return f"https://{shown}" + (f":{port}" if port is not None else "")


@dataclass(frozen=True)
class _User:
    where: str
    token: str | None
    cert: bytes | None
    key: bytes | None


def _user(where: str, body: Mapping[str, Any], problems: _Problems) -> _User:
    _fields(where, body, _USER_OK, problems)
    token = body.get("token")
    if token is not None and not (isinstance(token, str) and _TOKEN.match(token)
                                  and len(token) <= MAX_TOKEN_CHARS):
        problems.add(f"{where}.token", "must be printable ASCII without spaces, at most "
                                       f"{MAX_TOKEN_CHARS} characters")
        token = None
    cert = key = None
    has_cert, has_key = "client-certificate-data" in body, "client-key-data" in body
    if has_cert:
        cert = _certificates(f"{where}.client-certificate-data",
                             body["client-certificate-data"], problems)
    if has_key:
        key = _private_key(f"{where}.client-key-data", body["client-key-data"], problems)
    if has_cert and not has_key:
        problems.add(f"{where}.client-key-data", "required with client-certificate-data")
    if has_key and not has_cert:
        problems.add(f"{where}.client-certificate-data", "required with client-key-data")
    return _User(where=where, token=token or None, cert=cert, key=key)


def parse(text: str, *, context: str | None = None) -> MemberCredentials:
    """The inline credentials of one context of a caller's kubeconfig (YAML or JSON text).

    ``context`` names the context (else ``current-context``, else the only one). Raises
    :class:`~mobility.errors.Invalid` naming every refused field (a 422 at the API).
    """
    doc = _load(text)
    if not isinstance(doc, Mapping):
        raise Invalid("kubeconfig: must be a kubeconfig document (a mapping)")
    problems = _Problems()
    for key in doc:
        if key not in _TOP:
            problems.add(str(key), "not supported")
    for key in ("current-context", "apiVersion", "kind"):
        if key in doc and not isinstance(doc[key], str):
            problems.add(key, "must be a string")
    if "preferences" in doc and not isinstance(doc["preferences"], Mapping):
        problems.add("preferences", "must be a mapping")

    def unique(seen: Mapping[str, object], where: str, name: str) -> bool:
        if name in seen:
            problems.add(f"{where.rsplit('.', 1)[0]}.name", f"{name!r} appears twice")
            return False
        return True

    clusters: dict[str, MemberCredentials] = {}
    for where, name, body in _entries(doc, "clusters", "cluster", problems):
        _fields(where, body, _CLUSTER_OK, problems)
        if body.get("insecure-skip-tls-verify") not in (None, False):
            problems.add(f"{where}.insecure-skip-tls-verify",
                         "not allowed (give certificate-authority-data)")
        server = _server_url(f"{where}.server", body.get("server"), problems)
        ca = None
        if "certificate-authority-data" in body:
            ca = _certificates(f"{where}.certificate-authority-data",
                               body["certificate-authority-data"], problems)
        if unique(clusters, where, name) and server is not None:
            clusters[name] = MemberCredentials(server=server, ca_data=ca)

    users: dict[str, _User] = {}
    for where, name, body in _entries(doc, "users", "user", problems):
        user = _user(where, body, problems)
        if unique(users, where, name):
            users[name] = user

    contexts: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for where, name, body in _entries(doc, "contexts", "context", problems):
        _fields(where, body, _CONTEXT_OK, problems)
        for key in ("cluster", "user", "namespace"):
            if key in body and not isinstance(body[key], str):
                problems.add(f"{where}.{key}", "must be a string")
        if unique(contexts, where, name):
            contexts[name] = (where, body)
    problems.raise_any()
    return _choose(doc, context, clusters=clusters, users=users, contexts=contexts)


def _choose(doc: Mapping[str, Any], context: str | None, *,
            clusters: Mapping[str, MemberCredentials], users: Mapping[str, _User],
            contexts: Mapping[str, tuple[str, Mapping[str, Any]]]) -> MemberCredentials:
    chosen = context or doc.get("current-context") or None
    if chosen is None:
        if len(contexts) != 1:
            raise Invalid(f"context: name one (the kubeconfig has {len(contexts)} contexts "
                          "and no current-context)")
        chosen = next(iter(contexts))
    if chosen not in contexts:
        field = "context" if context else "current-context"
        raise Invalid(f"{field}: no context {chosen!r} in the kubeconfig's contexts")
    where, body = contexts[chosen]
    cluster_name, user_name = body.get("cluster"), body.get("user")
    if not cluster_name or cluster_name not in clusters:
        raise Invalid(f"{where}.cluster: no cluster {cluster_name!r} in the kubeconfig's "
                      "clusters")
    if not user_name or user_name not in users:
        raise Invalid(f"{where}.user: no user {user_name!r} in the kubeconfig's users")
    cluster, user = clusters[cluster_name], users[user_name]
    if not user.token and not user.cert:
        raise Invalid(f"{user.where}: no credentials (give token, or client-certificate-data "
                      "and client-key-data)")
    return MemberCredentials(server=cluster.server, ca_data=cluster.ca_data, token=user.token,
                             client_cert_data=user.cert, client_key_data=user.key)
