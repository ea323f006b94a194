"""``mobility demo``: a live move on the local lab, under a 1,000 req/s probe.

Brings up what is missing (lab, Redis, agents, orchestrator, beat, API), deploys a UDP echo
service in ``core`` and a probe client whose requests cross an NSM-style link, moves the echo
service to ``edge`` through the HTTP API while showing the phase timeline, and reports the
move's phases and what the probe saw: sent, lost, duplicated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cli.client import ApiClient
from dataplane.lab.topology import LabPlan

ECHO, CLIENT = "demo-echo", "demo-client"


class DemoError(RuntimeError):
    pass


def _check(resp: httpx.Response, what: str) -> Any:
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail")
        except ValueError:
            detail = resp.text
        raise DemoError(f"{what}: HTTP {resp.status_code}: {detail}")
    return resp.json() if resp.content else None


def remove_demo_services(api: httpx.Client) -> None:
    for name in (CLIENT, ECHO):
        if api.get(f"/v1/services/{name}").status_code == 200:
            _check(api.delete(f"/v1/services/{name}"), f"removing {name}")


def wait_probe(path: Path, *, received: int, timeout: float,
               key: str = "received") -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            if int(data.get(key, 0)) >= received:
                return data
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    raise DemoError(f"the probe got fewer than {received} replies in {timeout:g} s "
                    f"(progress file {path})")


def follow_events(api: httpx.Client, move_id: str,
                  on_event: Callable[[dict[str, Any]], None]) -> None:
    with api.stream("GET", f"/v1/moves/{move_id}/events", timeout=120) as resp:
        if resp.status_code != 200:
            raise DemoError(f"events of {move_id}: HTTP {resp.status_code}")
        kind = ""
        for line in resp.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                if kind == "end":
                    return
                on_event(json.loads(line[6:]))


@dataclass(frozen=True)
class Stateful:
    """The stateful variant: the session service with extra state, and its session client."""

    state_mb: float = 64.0
    dirty_rate: float = 1.0
    strategy: str = "precopy"


def run(*, plan: LabPlan, api_url: str, token: str, to_cluster: str = "edge",
        from_cluster: str = "core",
        rate: float = 1000.0, settle_s: float = 1.0, stateful: Stateful | None = None,
        on_event: Callable[[dict[str, Any]], None] = lambda _: None,
        say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    service: dict[str, Any]
    client_spec: dict[str, Any]
    if stateful is None:
        service = {"name": ECHO, "workload": "echo", "cluster": from_cluster}
        client_spec = {"name": CLIENT, "workload": "probe", "cluster": from_cluster,
                       "peers": [ECHO], "params": {"rate": rate}}
    else:
        service = {"name": ECHO, "workload": "sessions", "cluster": from_cluster,
                   "params": {"state_mb": stateful.state_mb,
                              "dirty_rate": stateful.dirty_rate}}
        client_spec = {"name": CLIENT, "workload": "session-probe", "cluster": from_cluster,
                       "peers": [ECHO], "params": {"rate": rate}}
    with ApiClient(api_url, token=token, timeout=120) as api:
        remove_demo_services(api)
        say(f"deploying {ECHO} ({service['workload']}) in {from_cluster}")
        _check(api.post("/v1/services", json=service), f"deploying {ECHO}")
        say(f"deploying {CLIENT} ({client_spec['workload']} at {rate:g} req/s over nsm-1)")
        client = _check(api.post("/v1/services", json=client_spec), f"deploying {CLIENT}")
        pod_dir = plan.run_dir / "pods" / client["instance"]["pod"] / "io"
        wait_probe(pod_dir / "progress.json", received=int(rate // 4), timeout=10,
                   key="answered" if stateful else "received")

        say(f"moving {ECHO} to {to_cluster}")
        body: dict[str, Any] = {"service": ECHO, "to_cluster": to_cluster}
        if stateful is not None:
            body["strategy"] = stateful.strategy
        move = _check(api.post("/v1/moves", json=body), "requesting the move")
        follow_events(api, move["id"], on_event)
        move = _check(api.get(f"/v1/moves/{move['id']}"), "reading the move")
        time.sleep(settle_s)  # keep probing through the settled state after the move
        echo = _check(api.get(f"/v1/services/{ECHO}"), f"reading {ECHO}")
        say("stopping the probe")
        _check(api.delete(f"/v1/services/{CLIENT}"), f"removing {CLIENT}")
        probe = json.loads((pod_dir / "probe.json").read_text())
        _check(api.delete(f"/v1/services/{ECHO}"), f"removing {ECHO}")

    where = echo.get("instance") or {}
    summary = {
        "move_id": move["id"],
        "status": move["status"],
        "total_ms": move["total_ms"],
        "phases": move["phase_ms"],
        "probes_sent": probe["sent"],
        "probes_lost": probe["lost"],
        "probes_duplicated": probe.get("duplicated", probe.get("double_increments")),
        "probe_max_gap_ms": probe["max_gap_ms"],
        "probe_rate": rate,
        "from_cluster": move["from_cluster"],
        "to_cluster": move["to_cluster"],
        "service_now_at": f"{where.get('cluster')}/{where.get('node')}/{where.get('pod')}",
        "error": move["error"],
    }
    if stateful is None:
        summary["probe_rtt_us_p50"] = probe["rtt_us_p50"]
    else:
        summary.update(
            strategy=move["strategy"], state_bytes=move["state_bytes"],
            precopy_rounds=move["precopy_rounds"], freeze_ms=move["freeze_ms"],
            counters_ok=probe["counters_ok"], probes_retransmitted=probe["retransmits"],
            sessions=probe["sessions"])
    return summary


CHAIN = "demo"
DEFAULT_CHAIN = (("client", "probe", "core"), ("fw", "middlebox", "core"),
                 ("nat", "middlebox", "edge"), ("server", "echo", "edge"))


def _merge_probes(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One client's results across its instances (a moved client has two)."""
    return {
        "sent": sum(int(r["sent"]) for r in results),
        "lost": sum(int(r["lost"]) for r in results),
        "duplicated": sum(int(r["duplicated"]) for r in results),
        "max_gap_ms": max(float(r["max_gap_ms"]) for r in results),
        "rtt_us_p50": results[-1]["rtt_us_p50"],
    }


def run_chain(*, plan: LabPlan, api_url: str, token: str, move: str | None = None,
              rate: float = 1000.0,
              settle_s: float = 1.0, on_event: Callable[[dict[str, Any]], None] = lambda _: None,
              say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Build the default chain across both clusters, move one element under the probe."""
    names = [e[0] for e in DEFAULT_CHAIN]
    move = move or names[1]
    if move not in names:
        raise DemoError(f"--move {move!r}: the chain's elements are {', '.join(names)}")
    with ApiClient(api_url, token=token, timeout=300) as api:
        if api.get(f"/v1/chains/{CHAIN}").status_code == 200:
            _check(api.delete(f"/v1/chains/{CHAIN}"), "removing the previous demo chain")
        remove_demo_services(api)
        say("deploying the chain " + " -> ".join(f"{n} ({w}, {c})" for n, w, c in DEFAULT_CHAIN))
        chain = _check(api.post("/v1/chains", json={
            "name": CHAIN, "rate": rate,
            "elements": [{"name": n, "workload": w, "cluster": c}
                         for n, w, c in DEFAULT_CHAIN]}), "deploying the chain")
        services = chain["services"]
        client = _check(api.get(f"/v1/services/{services[0]}"), "reading the client")
        pod_dirs = [plan.run_dir / "pods" / client["instance"]["pod"] / "io"]
        wait_probe(pod_dirs[0] / "progress.json", received=int(rate // 4), timeout=15)

        svc = f"{CHAIN}-{move}"
        current = _check(api.get(f"/v1/services/{svc}"), f"reading {svc}")["instance"]
        to_cluster = "edge" if current["cluster"] == "core" else "core"
        say(f"moving {move} ({svc}) {current['cluster']} -> {to_cluster}")
        m = _check(api.post("/v1/moves", json={"service": svc, "to_cluster": to_cluster}),
                   "requesting the move")
        follow_events(api, m["id"], on_event)
        m = _check(api.get(f"/v1/moves/{m['id']}"), "reading the move")
        time.sleep(settle_s)
        if move == names[0] and m["status"] == "succeeded":
            moved = _check(api.get(f"/v1/services/{svc}"), "reading the client")
            pod_dirs.append(plan.run_dir / "pods" / moved["instance"]["pod"] / "io")
        where = _check(api.get(f"/v1/services/{svc}"), f"reading {svc}")["instance"]
        say("removing the chain (the client first)")
        _check(api.delete(f"/v1/chains/{CHAIN}"), "removing the chain")
        probe = _merge_probes([json.loads((d / "probe.json").read_text()) for d in pod_dirs])
    return {
        "move_id": m["id"],
        "status": m["status"],
        "total_ms": m["total_ms"],
        "phases": m["phase_ms"],
        "probes_sent": probe["sent"],
        "probes_lost": probe["lost"],
        "probes_duplicated": probe["duplicated"],
        "probe_max_gap_ms": probe["max_gap_ms"],
        "probe_rtt_us_p50": probe["rtt_us_p50"],
        "probe_rate": rate,
        "from_cluster": m["from_cluster"],
        "to_cluster": m["to_cluster"],
        "service_now_at": f"{where['cluster']}/{where['node']}/{where['pod']}",
        "error": m["error"],
        "chain": names,
        "moved": move,
    }
