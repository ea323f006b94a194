"""The ``mobility`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from cli import demo as demo_mod
from cli import images as images_mod
from cli import logs as logs_mod
from cli import views
from cli.client import api_client
from cli.output import err, fail, out
from cli.stack import Stack, StackError, default_stack
from dataplane.lab import topology
from mobility.logs import configure_logging
from mobility.settings import DEFAULT_ENV_FILE, get_settings

# add_completion: --install-completion / --show-completion for bash, zsh, fish, PowerShell
app = typer.Typer(help="Move running services between clusters.", no_args_is_help=True,
                  add_completion=True)
lab_app = typer.Typer(help="The local multi-cluster lab.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")
chain_app = typer.Typer(help="Service chains (client -> middleboxes -> server).",
                        no_args_is_help=True)
app.add_typer(chain_app, name="chain")
app.add_typer(images_mod.image_app, name="image")

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]
ConfigOpt = Annotated[str | None, typer.Option("--config", help="lab topology (TOML)")]


def _stack(config: str | None) -> Stack:
    try:
        return default_stack(config)
    except (topology.LabConfigError, OSError) as exc:
        err.print(f"[red]lab config:[/] {exc}")
        raise typer.Exit(2) from exc


def _plan(config: str | None) -> topology.LabPlan:
    return _stack(config).plan


def _need_root() -> None:
    if os.geteuid() != 0:
        err.print("[red]the lab needs root[/] (it makes network namespaces); run as root")
        raise typer.Exit(2)


@lab_app.command("up")
def lab_up(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Create the lab's namespaces, links and routes (idempotent)."""
    _need_root()
    plan = topology.up(_plan(config))
    status = topology.status(plan.name)
    if as_json:
        print(json.dumps(status))
    else:
        out.print(f"lab [bold]{plan.name}[/] is up: {len(plan.clusters)} clusters, "
                  f"{len(plan.nodes)} nodes, underlay {plan.underlay}")


@lab_app.command("down")
def lab_down(as_json: JsonOpt = False) -> None:
    """Remove everything the lab made: processes, namespaces, host link (idempotent)."""
    _need_root()
    name = get_settings().lab_name
    report = topology.down(name)
    env_file = os.environ.get("MOBILITY_ENV_FILE", DEFAULT_ENV_FILE)
    if os.path.isfile(env_file):
        with open(env_file) as fh:
            if f"MOBILITY_LAB_NAME={name}\n" in fh.read():
                os.unlink(env_file)
    left = topology.namespaces_left(name)
    result = {"lab": name, "namespaces_removed": report.namespaces,
              "links_removed": report.links, "processes_ended": len(report.processes),
              "containers_removed": report.containers,
              "namespaces_left": left}
    if as_json:
        print(json.dumps(result))
    else:
        out.print(f"lab [bold]{name}[/] is down: {len(report.namespaces)} namespaces, "
                  f"{len(report.links)} host links, {len(report.processes)} processes, "
                  f"{len(report.containers)} container objects removed")
    if left:
        raise typer.Exit(1)


def _services() -> list[dict[str, Any]] | str:
    try:
        with api_client(timeout=3) as api:
            resp = api.get("/v1/services")
            resp.raise_for_status()
            result: list[dict[str, Any]] = resp.json()
            return result
    except httpx.HTTPError as exc:
        return f"API not reachable: {exc}"


@lab_app.command("status")
def lab_status(as_json: JsonOpt = False) -> None:
    """Clusters, nodes, pods (namespace, addresses, links) and services."""
    status = topology.status(get_settings().lab_name)
    services = _services()
    status["services"] = services if isinstance(services, list) else []
    if isinstance(services, str):
        status["services_error"] = services
    if as_json:
        print(json.dumps(status))
        return
    if not status["up"]:
        out.print(f"lab [bold]{status['name']}[/] is down")
        return
    table = Table(title=f"lab {status['name']} ({status['underlay']})")
    for col in ("cluster", "node", "underlay", "pods"):
        table.add_column(col)
    for c in status["clusters"]:
        for n in c["nodes"]:
            pods = [p["pod"] for p in status["pods"]
                    if (p.get("cluster"), p.get("node")) == (c["name"], n["name"])]
            table.add_row(c["name"], n["name"], n["underlay_ip"], ", ".join(pods))
    out.print(table)
    for s in status["services"]:
        inst = s.get("instance") or {}
        out.print(f"service {s['name']} ({s['workload']}) at {inst.get('cluster')}/"
                  f"{inst.get('node')} pod {inst.get('pod')}")


@app.command("up")
def stack_up(config: ConfigOpt = None) -> None:
    """Bring up the lab and its control plane: Redis, node agents, orchestrator, beat, API."""
    _need_root()
    stack = _stack(config)
    try:
        stack.up(progress=lambda what: err.print(f"[dim]starting {what}[/]"))
    except StackError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    out.print(f"up: API at {stack.api_url}, Redis on 127.0.0.1:{stack.redis_port}")


@app.command("down")
def stack_down(as_json: JsonOpt = False) -> None:
    """The same as ``mobility lab down``."""
    lab_down(as_json)


def _report_probe(stack: Stack, summary: dict[str, Any]) -> None:
    """What the demo's probe saw goes to ``mobility_probe_requests_total`` (GET /metrics),
    once per move; a registry that cannot take it costs the demo nothing."""
    from redis.exceptions import RedisError

    from mobility.store import Registry
    from mobility.store.metrics import MetricStore

    try:
        reg = Registry.from_url(stack.redis_url())
        MetricStore(reg.r).report_probe(str(summary["move_id"]),
                                        sent=int(summary["probes_sent"]),
                                        lost=int(summary["probes_lost"]),
                                        duplicated=int(summary["probes_duplicated"] or 0))
        reg.r.close()
    except RedisError as exc:
        logging.getLogger(__name__).warning("the probe's figures were not recorded: %s", exc)


@app.command("demo")
def demo(
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    rate: Annotated[float, typer.Option(help="probe requests per second")] = 1000.0,
    to: Annotated[str, typer.Option(help="cluster to move the service to")] = "edge",
    source: Annotated[str, typer.Option("--from", help="cluster to start in")] = "core",
    stateful: Annotated[bool, typer.Option(help="move the stateful session service")] = False,
    state_mb: Annotated[float, typer.Option(help="extra state of the session service, MB")] = 64,
    dirty_rate: Annotated[float, typer.Option(
        help="percent of the extra state rewritten per second")] = 1.0,
    strategy: Annotated[str, typer.Option(help="precopy or stop-and-copy")] = "precopy",
    chain: Annotated[bool, typer.Option(
        help="a chain client -> fw -> nat -> server across both clusters")] = False,
    move_element: Annotated[str | None, typer.Option(
        "--move", help="the chain element to move (default: the first middlebox)")] = None,
) -> None:
    """A live move on the local lab: echo service core -> edge under a 1,000 req/s probe.

    With --stateful, the session service (its state over Redis, pre-copy, a short freeze) and a
    client that checks every session's counter continues across the move.
    """
    if move_element is not None and not chain:
        err.print("[red]--move names a chain element: use it with --chain[/]")
        raise typer.Exit(2)
    if strategy not in ("precopy", "stop-and-copy"):
        err.print("[red]--strategy must be precopy or stop-and-copy[/]")
        raise typer.Exit(2)
    _need_root()
    stack = _stack(config)
    plan = stack.plan

    def say(message: str) -> None:
        if not as_json:
            err.print(f"[dim]{message}[/]")

    try:
        stack.up(progress=lambda what: say(f"starting {what}"))
        started = time.monotonic()

        def on_event(ev: dict[str, Any]) -> None:
            if as_json:
                return
            t = f"{(time.monotonic() - started):7.3f}s"
            phase = ev.get("phase") or ""
            colour = {"phase_started": "cyan", "phase_ended": "green", "phase_failed": "red",
                      "cutover_confirmed": "magenta", "status": "yellow"}.get(ev["kind"], "white")
            out.print(f"{t}  [{colour}]{ev['kind']:<18}[/] {phase:<8} {ev.get('detail', '')}")

        if chain:
            summary = demo_mod.run_chain(plan=plan, api_url=stack.api_url, token=stack.token(),
                                         move=move_element,
                                         rate=rate, on_event=on_event, say=say)
        else:
            summary = demo_mod.run(
                plan=plan, api_url=stack.api_url, token=stack.token(), to_cluster=to,
                from_cluster=source,
                rate=rate, on_event=on_event, say=say,
                stateful=demo_mod.Stateful(state_mb=state_mb, dirty_rate=dirty_rate,
                                           strategy=strategy) if stateful else None)
    except (StackError, demo_mod.DemoError, httpx.HTTPError) as exc:
        err.print(f"[red]demo failed:[/] {exc}")
        raise typer.Exit(1) from exc
    _report_probe(stack, summary)
    ok = (summary["status"] == "succeeded" and summary["probes_lost"] == 0
          and summary.get("counters_ok", True))
    if as_json:
        print(json.dumps(summary))
    else:
        table = Table(title=f"move {summary['move_id']}: {summary['status']}")
        table.add_column("what")
        table.add_column("value", justify="right")
        for phase, ms in summary["phases"].items():
            table.add_row(f"phase {phase}", f"{ms:.1f} ms")
        table.add_row("total (API call to succeeded)", f"{summary['total_ms']} ms")
        table.add_row("requests sent", str(summary["probes_sent"]))
        table.add_row("lost", str(summary["probes_lost"]))
        table.add_row("duplicated", str(summary["probes_duplicated"]))
        table.add_row("longest reply gap", f"{summary['probe_max_gap_ms']} ms")
        if stateful:
            table.add_row("state moved", f"{summary['state_bytes'] / 1e6:.1f} MB in "
                                         f"{summary['precopy_rounds']} rounds")
            table.add_row("freeze window", f"{summary['freeze_ms']} ms")
            table.add_row("counters continue (no reset, gap, double)",
                          str(summary["counters_ok"]))
            table.add_row("retransmitted by the client", str(summary["probes_retransmitted"]))
        if chain:
            table.add_row("chain", " -> ".join(summary["chain"]))
            table.add_row("element moved", summary["moved"])
        table.add_row("moved", f"{summary['from_cluster']} -> {summary['to_cluster']}")
        table.add_row("service now at", summary["service_now_at"])
        out.print(table)
    if not ok:
        raise typer.Exit(1)


def chain_request(path: str) -> dict[str, Any]:
    """The body of ``POST /v1/chains`` from a chain file (TOML: name, rate, [[elements]])."""
    import tomllib

    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise typer.BadParameter(f"{path}: {exc}") from exc
    unknown = sorted(set(raw) - {"name", "rate", "elements"})
    if unknown or "name" not in raw or not isinstance(raw.get("elements"), list):
        extra = f"; unknown keys: {unknown}" if unknown else ""
        raise typer.BadParameter(f"{path}: a chain file has name, rate and [[elements]] "
                                 f"(name, workload, cluster){extra}")
    return {"name": raw["name"], "rate": raw.get("rate", 1000.0), "elements": raw["elements"]}


@chain_app.command("deploy")
def chain_deploy(path: str, as_json: JsonOpt = False) -> None:
    """Deploy the chain a file declares (through the API)."""
    body = chain_request(path)
    with api_client(timeout=300) as api:
        resp = api.post("/v1/chains", json=body)
    if resp.status_code >= 400:
        fail(resp)
    if as_json:
        print(json.dumps(resp.json()))
    else:
        out.print(f"chain {body['name']}: " + " -> ".join(resp.json()["services"]))


@chain_app.command("delete")
def chain_delete(name: str) -> None:
    """Remove a chain, its client first."""
    with api_client(timeout=300) as api:
        resp = api.delete(f"/v1/chains/{name}")
    if resp.status_code >= 400:
        fail(resp)
    out.print(f"chain {name} removed")


@app.command("deploy")
def deploy(file: Annotated[str, typer.Argument(help="a service file (TOML or YAML)")],
           as_json: JsonOpt = False) -> None:
    """Deploy the service a file declares (through the API)."""
    from pathlib import Path

    path = Path(file)
    if not path.is_file():
        raise typer.BadParameter(f"{file}: no such file")
    images_mod.deploy(path, as_json=as_json)


@app.command("remove")
def remove(service: str) -> None:
    """Remove a service and its links (through the API)."""
    with api_client(timeout=300) as api:
        resp = api.delete(f"/v1/services/{service}")
    if resp.status_code >= 400:
        fail(resp)
    out.print(f"service {service} removed")


@app.command("move")
def move(
    service: str, to_cluster: str,
    wait: Annotated[bool, typer.Option(help="wait for the move to end")] = True,
    as_json: JsonOpt = False,
    max_freeze_ms: Annotated[float | None, typer.Option(
        help="downtime budget: roll back before freezing if the freeze would be longer")] = None,
    deadline_s: Annotated[float | None, typer.Option(
        help="how long to wait for the freeze to fit --max-freeze-ms (default 30)")] = None,
) -> None:
    """Ask the API to move SERVICE to TO_CLUSTER."""
    body: dict[str, object] = {"service": service, "to_cluster": to_cluster}
    if max_freeze_ms is not None:
        body["max_freeze_ms"] = max_freeze_ms
    if deadline_s is not None:
        body["deadline_s"] = deadline_s
    with api_client(timeout=60) as api:
        resp = api.post("/v1/moves", json=body)
        if resp.status_code >= 400:
            fail(resp)
        m = resp.json()
        if wait:
            demo_mod.follow_events(api, m["id"], lambda _e: None)
            m = api.get(f"/v1/moves/{m['id']}").json()
    if as_json:
        print(json.dumps(m))
    else:
        out.print(f"move {m['id']}: {m['status']} ({m.get('total_ms')} ms)")
    if wait and m["status"] != "succeeded":
        raise typer.Exit(1)


def main() -> None:
    configure_logging(os.environ.get("MOBILITY_LOG_LEVEL", "WARNING"))
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


token_app = typer.Typer(help="API tokens (viewer, operator, admin), kept as digests in Redis.",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")


def _registry() -> Any:
    from mobility.store import Registry

    return Registry.from_url(get_settings().redis_url.get_secret_value())


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="viewer, operator or admin")],
    ttl: Annotated[float | None, typer.Option(help="seconds until it expires (none: never)")]
    = None,
    name: Annotated[str, typer.Option(help="what it is for")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Make a token and print it: this once, never again (only its digest is kept)."""
    from mobility import tokens
    from mobility.errors import Invalid

    try:
        record, secret = tokens.mint(role=tokens.Role(role), name=name, ttl_s=ttl)
    except (ValueError, Invalid) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    _registry().put_token(record)
    if as_json:
        print(json.dumps({"id": record.id, "role": str(record.role), "name": record.name,
                          "expires_at": record.expires_at, "token": secret}))
    else:
        out.print(f"token {record.id} ({record.role}); keep it, it is not shown again:")
        print(secret)


@token_app.command("ls")
def token_ls(as_json: JsonOpt = False) -> None:
    """The tokens: id, role, name, when made, when they expire (never the tokens)."""
    rows = [{"id": t.id, "role": str(t.role), "name": t.name, "created_at": t.created_at,
             "expires_at": t.expires_at} for t in _registry().tokens()]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("id", "role", "name", "created", "expires")
    for r in rows:
        table.add_row(str(r["id"]), str(r["role"]), str(r["name"]),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(float(r["created_at"]))),
                      "never" if r["expires_at"] is None else time.strftime(
                          "%Y-%m-%d %H:%M", time.localtime(float(r["expires_at"]))))
    out.print(table)


@token_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke a token by its id: every request with it is refused from now on."""
    if not _registry().revoke_token(token_id):
        err.print(f"[red]no token {token_id!r}[/]")
        raise typer.Exit(1)
    out.print(f"revoked {token_id}")


app.command("status")(views.status_command)
app.command("moves")(views.moves_command)
app.command("logs")(logs_mod.command)


if __name__ == "__main__":
    main()
