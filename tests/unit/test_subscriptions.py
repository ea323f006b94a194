"""Move notifications without a service: the URL whitelist, the signature, the backoff, the
events a journal makes and the body sent.

Aspects: each refused syntax (scheme, userinfo, port, length, fragment, control characters,
backslash, non-ASCII, unbracketed or zoned IPv6); numeric host tricks (``2130706433``,
``0x7f.1``, octal, short forms) refused even when loopback is allowed; each refused address
class for IPv4 and IPv6, including the IPv4 address inside an IPv6 one (mapped, NAT64, 6to4);
every resolved address checked (one private among public ones refuses the URL); the
allow-list (CIDR, host name, mapped forms, bad entries); a refused or unresolvable name;
``localhost`` through the system's resolver; what an accepted URL resolves to (addresses,
``Host``); HMAC-SHA256 against RFC 4231's vector and verification of a tampered body; the
backoff schedule; which journal entries are notifications; the body and its encoding.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket

import pytest

from mobility import subscriptions as subs
from mobility.errors import Conflict, Invalid
from mobility.models import Move, MoveStatus, Phase

NONE = subs.AllowList()
LOOPBACK_ALLOWED = subs.AllowList.parse(["127.0.0.1/32"])


def fixed(*addresses: str) -> subs.Resolver:
    """A resolver that answers ``addresses`` for any name (no DNS in unit tests)."""
    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)
    return resolve


def failing(host: str, port: int) -> list[str]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize("url", [
    "ftp://example.com/", "file:///etc/passwd", "gopher://example.com/", "javascript:alert(1)",
    "redis://example.com:6379/", "//example.com/", "example.com/hook", "",
    "http://user:pw@example.com/", "http://user@example.com/", "http://@example.com/",
    "http://example.com:0/", "http://example.com:65536/", "http://example.com:99999/",
    "http://example.com:http/", "http://example.com:-1/",
    "http://example.com/#frag", "http://example.com/#",
    "http://example.com/a b", "http://example.com/\r\nX-Injected: 1", "http://exa\tmple.com/",
    "http://example.com\\@evil.com/", "http://exämple.com/", "http:///path", "http://:80/",
    "http://::1/", "http://[::1%25lo]/", "http://[fe80::1%eth0]/", "http://[not-v6]/",
    "http://under_score.example/", "http://-lead.example/", "http://" + "a" * 64 + ".com/",
    "http://example.com/" + "a" * subs.MAX_URL_CHARS,
])
def test_refused_syntax(url: str) -> None:
    with pytest.raises(subs.UrlRefused):
        subs.check_url(url)


@pytest.mark.parametrize("url", [
    "http://2130706433/", "http://0x7f.1/", "http://0x7f000001/", "http://017700000001/",
    "http://127.1/", "http://127.0.1/", "http://0177.0.0.1/", "http://0x7f.0.0.1/",
    "http://127.000.000.001/", "http://0/", "http://1.2.3.0x4/",
])
@pytest.mark.parametrize("allow", [NONE, LOOPBACK_ALLOWED], ids=["plain", "loopback-allowed"])
def test_numeric_host_tricks_are_refused(url: str, allow: subs.AllowList) -> None:
    with pytest.raises(subs.UrlRefused, match="dotted"):
        subs.check_and_resolve(url, allow=allow, resolver=fixed("127.0.0.1"))


@pytest.mark.parametrize(("url", "why"), [
    ("http://127.0.0.1/", "loopback"), ("http://127.8.9.10:8080/", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://10.1.2.3/", "private"), ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1/", "private"), ("http://198.18.0.5/", "private"),
    ("http://224.0.0.1/", "multicast"), ("http://0.0.0.0/", "unspecified"),
    ("http://240.0.0.1/", "reserved"), ("http://255.255.255.255/", "reserved"),
    ("http://100.64.0.1/", "not globally routable"),
    ("http://[::1]/", "loopback"), ("http://[fe80::1]/", "link-local"),
    ("http://[fc00::1]/", "private"), ("http://[fd12:3456::1]:8443/", "private"),
    ("http://[ff02::1]/", "multicast"), ("http://[::]/", "unspecified"),
    ("http://[::ffff:127.0.0.1]/", "loopback"), ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    ("http://[64:ff9b::7f00:1]/", "loopback"), ("http://[64:ff9b::a00:1]/", "private"),
    ("http://[2002:7f00:1::1]/", "loopback"), ("http://[2002:c0a8:101::1]/", "private"),
    ("http://[2001:db8::1]/", "reserved|private|not globally"),
])
def test_refused_address_classes(url: str, why: str) -> None:
    with pytest.raises(subs.UrlRefused, match=why):
        subs.check_and_resolve(url, allow=NONE, resolver=failing)


def test_every_resolved_address_is_checked() -> None:
    with pytest.raises(subs.UrlRefused, match=r"10\.0\.0\.7, a private"):
        subs.check_and_resolve("https://hooks.example.com/x", allow=NONE,
                               resolver=fixed("93.184.216.34", "10.0.0.7"))
    with pytest.raises(subs.UrlRefused, match="link-local"):
        subs.check_and_resolve("https://hooks.example.com/x", allow=NONE,
                               resolver=fixed("2606:4700::1111", "fe80::1%eth0"))


def test_localhost_through_the_system_resolver_is_refused() -> None:
    with pytest.raises(subs.UrlRefused, match="loopback"):
        subs.check_and_resolve("http://localhost:8080/hook", allow=NONE)


def test_a_name_that_does_not_resolve() -> None:
    with pytest.raises(subs.UrlUnresolvable) as info:
        subs.check_and_resolve("https://nowhere.example/", allow=NONE, resolver=failing)
    assert info.value.retryable and isinstance(info.value, Invalid)
    with pytest.raises(subs.UrlUnresolvable):
        subs.check_and_resolve("https://nowhere.example/", allow=NONE, resolver=fixed())


def test_accepted_urls_resolve_to_checked_addresses() -> None:
    t = subs.check_and_resolve("https://Hooks.Example.COM./a/b?x=1&y=2", allow=NONE,
                               resolver=fixed("93.184.216.34", "93.184.216.34",
                                              "2606:2800:220:1::1"))
    assert t.addresses == ("93.184.216.34", "2606:2800:220:1::1")
    e = t.endpoint
    assert (e.scheme, e.host, e.port, e.target) == ("https", "hooks.example.com", 443,
                                                    "/a/b?x=1&y=2")
    assert e.host_header == "hooks.example.com"
    t = subs.check_and_resolve("HTTP://93.184.216.34:8080", allow=NONE, resolver=failing)
    assert t.addresses == ("93.184.216.34",)
    assert (t.endpoint.scheme, t.endpoint.port, t.endpoint.target) == ("http", 8080, "/")
    assert t.endpoint.host_header == "93.184.216.34:8080"
    t = subs.check_and_resolve("https://[2606:4700::1111]:8443/h", allow=NONE, resolver=failing)
    assert t.addresses == ("2606:4700::1111",)
    assert t.endpoint.host_header == "[2606:4700::1111]:8443"


def test_the_allow_list() -> None:
    t = subs.check_and_resolve("http://127.0.0.1:8080/hook", allow=LOOPBACK_ALLOWED)
    assert t.addresses == ("127.0.0.1",)
    with pytest.raises(subs.UrlRefused, match=r"127\.0\.0\.2"):
        subs.check_and_resolve("http://127.0.0.2:8080/hook", allow=LOOPBACK_ALLOWED)
    with pytest.raises(subs.UrlRefused, match="loopback"):
        subs.check_and_resolve("http://[::1]:8080/hook", allow=LOOPBACK_ALLOWED)
    # the mapped form of an allowed address is that address
    assert subs.check_and_resolve("http://[::ffff:127.0.0.1]/", allow=LOOPBACK_ALLOWED)
    # a name the admin allows: its addresses are taken as they are; other names are not
    named = subs.AllowList.parse(["hooks.internal.", " 198.18.0.0/15 ", ""])
    assert subs.check_and_resolve("http://HOOKS.internal/x", allow=named,
                                  resolver=fixed("10.9.8.7")).addresses == ("10.9.8.7",)
    with pytest.raises(subs.UrlRefused):
        subs.check_and_resolve("http://other.internal/x", allow=named, resolver=fixed("10.9.8.7"))
    assert subs.check_and_resolve("http://198.19.1.2/", allow=named)
    # an allowance lifts the address check only: the syntax rules stay
    with pytest.raises(subs.UrlRefused, match="user name"):
        subs.check_and_resolve("http://u:p@127.0.0.1/", allow=LOOPBACK_ALLOWED)
    with pytest.raises(Conflict, match="neither a CIDR nor a host name"):
        subs.AllowList.parse(["127.0.0.1/33x"])


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    # RFC 4231, test case 2
    assert subs.sign(b"what do ya want for nothing?", "Jefe") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    body = subs.encode({"b": 1, "a": [1, 2]})
    secret = subs.new_secret()
    header = subs.sign(body, secret)
    assert header == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert subs.verify(body, secret, header)
    assert not subs.verify(body + b" ", secret, header)
    assert not subs.verify(body, secret + "x", header)
    assert not subs.verify(body, secret, "sha256=" + "0" * 64)
    assert subs.new_secret() != secret and len(secret) > 40


def test_backoff_schedule() -> None:
    assert subs.schedule(6) == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert subs.schedule(1) == []
    assert subs.backoff(3, base_s=0.5) == 2.0
    assert subs.backoff(40) == subs.BACKOFF_MAX_S
    with pytest.raises(ValueError):
        subs.backoff(0)


@pytest.mark.parametrize(("kind", "phase", "detail", "event"), [
    ("phase_started", "admit", "", subs.STARTED),
    ("phase_started", "place", "", None),
    ("phase_ended", "admit", "3 ms", None),
    ("cutover_confirmed", "cutover", "1 peer(s) switched", subs.CUTOVER),
    ("status", None, "succeeded", subs.SUCCEEDED),
    ("status", None, "rolled_back", subs.ROLLED_BACK),
    ("status", None, "failed: left behind: x", subs.FAILED),
    ("status", None, "rolling_back: wire failed", None),
    ("status", None, "pending", None),
    ("freeze_window", "cutover", "2 ms", None),
])
def test_which_journal_entries_notify(kind: str, phase: str | None, detail: str,
                                      event: str | None) -> None:
    assert subs.event_for(kind, phase=phase, detail=detail) == event


def test_the_body() -> None:
    move = Move(id="mv-20261202000000-abcdef", service="echo", from_cluster="core",
                to_cluster="edge", status=MoveStatus.SUCCEEDED, phase=Phase.RELEASE,
                created_at=100.0, finished_at=101.5, phase_ms={"admit": 1.0, "cutover": 7.5},
                freeze_ms=3.25)
    body = subs.payload(move=move, event=subs.SUCCEEDED, ts=101.5)
    assert body["event_id"] == "mv-20261202000000-abcdef.move.succeeded"
    assert (body["event"], body["move_id"], body["service"], body["from_cluster"],
            body["to_cluster"], body["status"]) == (subs.SUCCEEDED, move.id, "echo", "core",
                                                    "edge", "succeeded")
    assert body["phase_ms"] == {"admit": 1.0, "cutover": 7.5}
    assert body["freeze_ms"] == 3.25 and body["total_ms"] == 1500.0
    assert body["timestamp"] == 101.5 and body["sequence"] == 2
    raw = subs.encode(body)
    assert json.loads(raw) == body
    assert raw == subs.encode(dict(reversed(list(body.items()))))  # the same bytes each time


def test_subscription_records() -> None:
    sub = subs.Subscription(id=subs.new_subscription_id(), url="https://x.example/h",
                            events=(subs.STARTED, subs.SUCCEEDED), created_at=1.0,
                            service="echo")
    assert subs.valid_subscription_id(sub.id)
    assert not subs.valid_subscription_id("sub-../../x")
    assert subs.Subscription.from_dict(sub.to_dict()) == sub
    assert sub.wants(subs.STARTED, "echo")
    assert not sub.wants(subs.CUTOVER, "echo") and not sub.wants(subs.STARTED, "other")
    assert subs.Subscription(id=sub.id, url=sub.url, events=(subs.CUTOVER,),
                             created_at=1.0).wants(subs.CUTOVER, "anything")
    d = subs.Delivery(ts=1.0, event=subs.STARTED, event_id="e", move_id="m", attempt=2,
                      outcome="retrying", status=500, error="answered HTTP 500", next_in_s=2.0)
    assert subs.Delivery.from_dict(d.to_dict()) == d
