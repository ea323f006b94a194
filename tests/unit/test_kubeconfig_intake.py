"""Checking a caller's kubeconfig (mobility.kubeconfigs) and sealing what it yields
(mobility.store.credentials.Sealer).

Aspects: a kubeconfig with an https server and inline credentials (token; client certificate
and key; CA data) gives those credentials, for the named context, the current one or the only
one; every refusal names its field: ``exec``, ``auth-provider``, ``tokenFile``, each file-path
field, ``proxy-url``, skipping TLS verification, basic auth, impersonation, fields nobody
knows, a server that is not a plain ``https://host[:port]`` (http, a path, a query, a
fragment, user info, escapes, a link-local or numeric-name host), garbage YAML, YAML aliases,
a document that is not a mapping, bad base64, data that is not PEM, an encrypted key, half a
client certificate, a token that cannot go in a header, duplicate names, dangling references,
a user without credentials; a refused entry is refused even in a context not used; no answer
quotes the document (its secrets) back, and the credentials' ``repr`` hides them. Sealing
round-trips, fails on another key or another record id, refuses to work without a key in
production and with a malformed key anywhere, and derives a development key from the Redis
URL (the same for every process of one stack, another for another stack).
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mobility.errors import Conflict, Invalid
from mobility.kubeconfigs import MemberCredentials, parse
from mobility.settings import Settings
from mobility.store.credentials import CredentialsUnreadable, Sealer

TOKEN = "tok3n-S3CRET-value-0123456789"
SERVER = "https://127.0.0.1:6443"


def _cert(subject: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


KEY = ec.generate_private_key(ec.SECP256R1())
KEY_PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
CERT_PEM = _cert("client", KEY)
CA_PEM = _cert("ca", ec.generate_private_key(ec.SECP256R1()))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(*, user: dict[str, Any] | None = None, cluster: dict[str, Any] | None = None,
               **top: Any) -> dict[str, Any]:
    """One context ``ctx`` (cluster ``c``, user ``u``), a token user and a CA by default."""
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "c", "cluster": {
            "server": SERVER, "certificate-authority-data": b64(CA_PEM), **(cluster or {})}}],
        "users": [{"name": "u", "user": {"token": TOKEN} if user is None else user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u",
                                                 "namespace": "default"}}],
        "current-context": "ctx", **top,
    }


def refused(doc: dict[str, Any] | str, *, context: str | None = None) -> str:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
    with pytest.raises(Invalid) as err:
        parse(text, context=context)
    message = str(err.value)
    for secret in (TOKEN, b64(KEY_PEM)[:40], "marker-secret"):
        assert secret not in message, message
    return message


# --- what is accepted ---


def test_an_inline_token_kubeconfig_gives_its_credentials() -> None:
    creds = parse(yaml.safe_dump(kubeconfig()))
    assert creds == MemberCredentials(server=SERVER, ca_data=CA_PEM, token=TOKEN)


def test_a_client_certificate_and_key_are_accepted() -> None:
    creds = parse(yaml.safe_dump(kubeconfig(user={
        "client-certificate-data": b64(CERT_PEM), "client-key-data": b64(KEY_PEM)})))
    assert creds.client_cert_data == CERT_PEM
    assert creds.client_key_data == KEY_PEM
    assert creds.token is None


def test_json_and_a_kubeconfig_as_write_kubeconfig_makes_it() -> None:
    import json

    assert parse(json.dumps(kubeconfig())).token == TOKEN


def test_the_context_is_named_or_current_or_the_only_one() -> None:
    doc = kubeconfig()
    doc["clusters"].append({"name": "d", "cluster": {"server": "https://d.example:443"}})
    doc["users"].append({"name": "w", "user": {"token": "other"}})
    doc["contexts"].append({"name": "other", "context": {"cluster": "d", "user": "w"}})
    assert parse(yaml.safe_dump(doc)).server == SERVER
    other = parse(yaml.safe_dump(doc), context="other")
    assert (other.server, other.token, other.ca_data) == ("https://d.example:443", "other", None)
    del doc["current-context"]
    assert "context: name one" in refused(doc)
    doc["contexts"].pop()
    assert parse(yaml.safe_dump(doc)).token == TOKEN


def test_the_server_is_normalised() -> None:
    creds = parse(yaml.safe_dump(kubeconfig(cluster={"server": "HTTPS://Kube.Example.COM/"})))
    assert creds.server == "https://kube.example.com"
    v6 = parse(yaml.safe_dump(kubeconfig(cluster={"server": "https://[::1]:6443"})))
    assert v6.server == "https://[::1]:6443"


# --- what is refused, naming the field ---


@pytest.mark.parametrize(("user", "field"), [
    ({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "/bin/sh",
               "args": ["-c", "touch /tmp/marker-secret"]}}, "users[0].user.exec"),
    ({"auth-provider": {"name": "gcp", "config": {"cmd-path": "/bin/true"}}},
     "users[0].user.auth-provider"),
    ({"tokenFile": "/etc/shadow"}, "users[0].user.tokenFile: not allowed (a file path"),
    ({"client-certificate": "/etc/ssl/c.pem", "client-key-data": b64(KEY_PEM)},
     "users[0].user.client-certificate: not allowed (a file path"),
    ({"client-certificate-data": b64(CERT_PEM), "client-key": "/etc/ssl/k.pem"},
     "users[0].user.client-key: not allowed (a file path"),
    ({"username": "admin", "password": "marker-secret"}, "users[0].user.password"),
    ({"token": TOKEN, "as": "system:admin"}, "users[0].user.as"),
    ({"token": TOKEN, "as-groups": ["system:masters"]}, "users[0].user.as-groups"),
])
def test_a_user_field_that_is_not_inline_credentials_is_refused(user: dict[str, Any],
                                                               field: str) -> None:
    message = refused(kubeconfig(user={"token": TOKEN, **user}))
    assert message.startswith(field if ":" in field else f"{field}: not allowed ("), message


def test_a_field_nobody_knows_is_not_supported() -> None:
    message = refused(kubeconfig(user={"token": TOKEN, "color": "blue"}))
    assert message == "users[0].user.color: not supported"


def test_exec_is_refused_with_what_to_give_instead() -> None:
    message = refused(kubeconfig(user={"exec": {"command": "aws"}}))
    assert message.startswith("users[0].user.exec: not allowed (it would run a command")
    assert "give token, or client-certificate-data and client-key-data" in message


@pytest.mark.parametrize(("cluster", "field"), [
    ({"certificate-authority": "/etc/kubernetes/ca.crt"}, "certificate-authority: not allowed (a "
                                                         "file path"),
    ({"proxy-url": "http://127.0.0.1:3128"}, "proxy-url: not allowed"),
    ({"insecure-skip-tls-verify": True}, "insecure-skip-tls-verify: not allowed"),
    ({"tls-server-name": "kubernetes"}, "tls-server-name: not allowed"),
    ({"something": 1}, "something: not supported"),
])
def test_a_cluster_field_that_is_not_inline_is_refused(cluster: dict[str, Any],
                                                       field: str) -> None:
    message = refused(kubeconfig(cluster=cluster))
    assert message.startswith(f"clusters[0].cluster.{field}"), message


@pytest.mark.parametrize("server", [
    "http://127.0.0.1:6443",
    "http://127.0.0.1:8470/v1/tokens",
    "ftp://kube.example",
    "file:///etc/passwd",
    "127.0.0.1:6443",
    "https://127.0.0.1:6443/api/v1/namespaces",
    "https://kube.example/k8s/clusters/c-1",
    "https://kube.example?x=1",
    "https://kube.example#frag",
    "https://admin:pw@kube.example",
    "https://kube.example@127.0.0.1",
    "https://kube.example\\@127.0.0.1",
    "https://%6b%75be.example",
    "https://kube example",
    "https://kubé.example",
    "https://169.254.169.254",
    "https://[fe80::1]:6443",
    "https://[::ffff:169.254.169.254]",
    "https://0.0.0.0:6443",
    "https://0x7f.1",
    "https://2130706433",
    "https://-bad-.example",
    "https://kube.example:0",
    "https://kube.example:99999",
    "https://",
    "",
    42,
])
def test_a_server_that_is_not_a_plain_https_url_is_refused(server: object) -> None:
    message = refused(kubeconfig(cluster={"server": server}))
    assert message.startswith("clusters[0].cluster.server: "), message


@pytest.mark.parametrize(("text", "expected"), [
    ("[not: a", "kubeconfig: not valid YAML (line 1, column 8)"),
    ("users: [{name: u, user: {token: marker-secret}}]\nclusters: {{{", "kubeconfig: not valid"),
    ("\t- marker-secret", "kubeconfig: not valid YAML"),
    ("just words marker-secret", "kubeconfig: must be a kubeconfig document"),
    ("", "kubeconfig: must be a kubeconfig document"),
    ("- 1\n- 2", "kubeconfig: must be a kubeconfig document"),
    ("a: &x [marker-secret]\nb: *x", "kubeconfig: YAML aliases are not allowed"),
    ("!!python/object/apply:os.system ['touch /tmp/marker-secret']", "kubeconfig: not valid"),
    ("[" * 50000, "kubeconfig: nested too deeply"),
    ("a: 1\n---\nb: 2", "kubeconfig: not valid YAML"),
])
def test_garbage_yaml_is_refused_without_quoting_it(text: str, expected: str) -> None:
    assert refused(text).startswith(expected)


@pytest.mark.parametrize(("doc", "field"), [
    (kubeconfig(user={"token": TOKEN + "\r\nX-Injected: 1"}), "users[0].user.token"),
    (kubeconfig(user={"token": 12345}), "users[0].user.token"),
    (kubeconfig(user={"client-certificate-data": b64(CERT_PEM)}),
     "users[0].user.client-key-data: required"),
    (kubeconfig(user={"client-key-data": b64(KEY_PEM)}),
     "users[0].user.client-certificate-data: required"),
    (kubeconfig(user={"client-certificate-data": "%%%", "client-key-data": b64(KEY_PEM)}),
     "users[0].user.client-certificate-data: not valid base64"),
    (kubeconfig(user={"client-certificate-data": b64(b"marker-secret"),
                      "client-key-data": b64(KEY_PEM)}),
     "users[0].user.client-certificate-data: not PEM"),
    (kubeconfig(user={"client-certificate-data": b64(CERT_PEM),
                      "client-key-data": b64(CERT_PEM)}),
     "users[0].user.client-key-data: not a PEM private key"),
    (kubeconfig(user={"client-certificate-data": b64(CERT_PEM), "client-key-data": b64(
        KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.BestAvailableEncryption(b"pw")))}),
     "users[0].user.client-key-data: an encrypted key"),
    (kubeconfig(cluster={"certificate-authority-data": b64(b"marker-secret")}),
     "clusters[0].cluster.certificate-authority-data: not PEM"),
    (kubeconfig(user={}), "users[0].user: no credentials"),
    (kubeconfig(extra={"a": 1}), "extra: not supported"),
    (kubeconfig(clusters="nope"), "clusters: must be a list"),
    (kubeconfig(users=[{"name": "u"}]), "users[0].user: required"),
    (kubeconfig(users=[{"user": {"token": TOKEN}}]), "users[0].name: required"),
    (kubeconfig(contexts=[{"name": "ctx", "context": {"cluster": "c", "user": "nobody"}}]),
     "contexts[0].context.user: no user 'nobody'"),
    (kubeconfig(contexts=[{"name": "ctx", "context": {"cluster": "zz", "user": "u"}}]),
     "contexts[0].context.cluster: no cluster 'zz'"),
    ({**kubeconfig(), "current-context": "gone"}, "current-context: no context 'gone'"),
])
def test_malformed_entries_are_refused_by_field(doc: dict[str, Any], field: str) -> None:
    assert refused(doc).startswith(field)


def test_a_named_context_that_is_missing_is_refused() -> None:
    assert refused(kubeconfig(), context="member-z").startswith(
        "context: no context 'member-z'")


def test_duplicate_names_are_refused() -> None:
    doc = kubeconfig()
    doc["users"].append({"name": "u", "user": {"token": "another"}})
    assert refused(doc).startswith("users[1].name: 'u' appears twice")


def test_a_refused_entry_is_refused_even_in_a_context_not_used() -> None:
    doc = kubeconfig()
    doc["users"].append({"name": "cloud", "user": {"exec": {"command": "gcloud"}}})
    doc["clusters"].append({"name": "plain", "cluster": {"server": "http://10.0.0.1:8080"}})
    message = refused(doc)
    assert "users[1].user.exec: not allowed" in message
    assert "clusters[1].cluster.server: must be an https URL" in message


def test_many_problems_are_summed_up() -> None:
    doc = kubeconfig()
    doc["users"] = [{"name": f"u{i}", "user": {"tokenFile": "/x"}} for i in range(15)]
    message = refused(doc)
    assert message.count("not allowed") == 10
    assert message.endswith("and 5 more")


# --- secrets are not shown ---


def test_the_credentials_repr_hides_every_secret() -> None:
    creds = MemberCredentials(server=SERVER, ca_data=CA_PEM, token=TOKEN,
                              client_cert_data=CERT_PEM, client_key_data=KEY_PEM)
    for text in (repr(creds), str(creds), f"{creds}", f"{[creds]}"):
        assert TOKEN not in text
        assert "PRIVATE KEY" not in text and "CERTIFICATE" not in text
        assert SERVER in text and "<hidden>" in text
    assert MemberCredentials.from_dict(creds.to_dict()) == creds


# --- sealing ---


def test_sealing_round_trips_and_binds_the_record_id() -> None:
    sealer = Sealer(b"k" * 32)
    blob = sealer.seal(TOKEN.encode(), aad=b"cred-1")
    assert TOKEN.encode() not in blob
    assert sealer.open(blob, aad=b"cred-1") == TOKEN.encode()
    assert sealer.seal(TOKEN.encode(), aad=b"cred-1") != blob  # a fresh nonce each time
    with pytest.raises(CredentialsUnreadable):
        sealer.open(blob, aad=b"cred-2")
    with pytest.raises(CredentialsUnreadable, match="MOBILITY_CREDENTIALS_KEY"):
        Sealer(b"j" * 32).open(blob, aad=b"cred-1")
    with pytest.raises(CredentialsUnreadable):
        sealer.open(blob[:-1] + bytes([blob[-1] ^ 1]), aad=b"cred-1")
    assert "k" * 8 not in repr(sealer)


def test_production_refuses_to_store_without_a_key() -> None:
    prod = {"environment": "production", "redis_url": "redis://:pw@127.0.0.1:6379/0"}
    with pytest.raises(Conflict, match="MOBILITY_CREDENTIALS_KEY is not set"):
        Sealer.from_settings(Settings(**prod))  # type: ignore[arg-type]
    key = base64.b64encode(b"p" * 32).decode()
    sealer = Sealer.from_settings(Settings(**prod, credentials_key=key))  # type: ignore[arg-type]
    other = Sealer.from_settings(Settings(credentials_key=key))  # type: ignore[arg-type]
    assert other.open(sealer.seal(b"x", aad=b"a"), aad=b"a") == b"x"
    urlsafe = base64.urlsafe_b64encode(b"\xfb" * 32).decode()
    assert Sealer.from_settings(Settings(credentials_key=urlsafe))  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["short", base64.b64encode(b"x" * 16).decode(), "!" * 44])
def test_a_malformed_key_is_refused(key: str) -> None:
    with pytest.raises(Conflict, match="32 bytes in base64") as err:
        Sealer.from_settings(Settings(credentials_key=key))  # type: ignore[arg-type]
    assert key not in str(err.value)


def test_development_derives_a_key_from_the_redis_url() -> None:
    a = Sealer.from_settings(Settings(redis_url="redis://:a@127.0.0.1:1/0"))  # type: ignore[arg-type]
    again = Sealer.from_settings(Settings(redis_url="redis://:a@127.0.0.1:1/0"))  # type: ignore[arg-type]
    b = Sealer.from_settings(Settings(redis_url="redis://:b@127.0.0.1:1/0"))  # type: ignore[arg-type]
    blob = a.seal(b"x", aad=b"r")
    assert again.open(blob, aad=b"r") == b"x"
    with pytest.raises(CredentialsUnreadable):
        b.open(blob, aad=b"r")


def test_the_key_is_never_printed_by_the_settings() -> None:
    key = base64.b64encode(b"q" * 32).decode()
    s = Settings(credentials_key=key)  # type: ignore[arg-type]
    for text in (repr(s), str(s), s.model_dump_json()):
        assert key not in text
