"""What an operator looks at: ``mobility status`` (the stack's processes, the clusters, where
each service runs, the moves in flight) and ``mobility moves`` (recent moves, ``--watch``: a
live view until Ctrl-C).

``status`` reads the stack's run directory and the registry directly (it must still show the
processes when the API or Redis is down: that is when one looks). ``moves`` reads through the
API with the caller's token, as ``mobility move`` does, so it works against any deployment,
not only the embedded stack.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cli.client import api_client
from cli.output import err, fail, out
from dataplane.lab import topology
from mobility.settings import get_settings

ROLES_ORDER = ("redis", "containerd", "supervisor", "orchestrator", "beat", "api")
STATUS_STYLE = {"succeeded": "green", "rolled_back": "yellow", "failed": "bold red",
                "running": "cyan", "pending": "dim", "rolling_back": "magenta"}
WATCH_S = 1.0


# --- mobility status ---

def _recorded(run_dir: Path, role: str) -> int | None:
    """The PID last recorded for ``role``, alive or not."""
    try:
        return int(json.loads((run_dir / "pids" / f"{role}.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def processes(run_dir: Path) -> list[dict[str, Any]]:
    """Every recorded process of the stack: its PID (``pid``: only while that very process
    runs), whether it is alive, its restarts by the supervisor and its log file."""
    from cli import supervise

    restarts = supervise.read_state(run_dir)
    roles = sorted((p.stem for p in (run_dir / "pids").glob("*.json")),
                   key=lambda r: (ROLES_ORDER.index(r) if r in ROLES_ORDER else 99, r))
    result = []
    for role in roles:
        pid = topology.recorded_pid(run_dir, role)
        entry = restarts.get(role, {})
        log = run_dir / "logs" / f"{role}.log"
        result.append({"role": role, "pid": pid, "recorded_pid": _recorded(run_dir, role),
                       "alive": pid is not None,
                       "restarts": int(entry.get("restarts", 0)),
                       "last_restart": entry.get("last_restart"),
                       "log": str(log) if log.exists() else None})
    return result


def gather_status() -> dict[str, Any]:
    from mobility.store import Registry

    settings = get_settings()
    run_dir = topology.RUN_ROOT / settings.lab_name
    result: dict[str, Any] = {"lab": settings.lab_name, "run_dir": str(run_dir),
                              "api_url": settings.api_url, "processes": processes(run_dir)}
    try:
        reg = Registry.from_url(settings.redis_url.get_secret_value())
        clusters = reg.clusters()
        services = reg.services()
        in_flight = reg.active_moves()
    except Exception as exc:  # Redis down: still show the processes
        result.update(clusters=[], services=[], moves_in_flight=[],
                      error=f"registry unreachable ({type(exc).__name__})")
        return result
    placed: dict[str, int] = {}
    for s in services.values():
        if s.instance:
            placed[s.instance.cluster] = placed.get(s.instance.cluster, 0) + 1
    result["clusters"] = [
        {"name": name, "nodes": [n.name for n in c.nodes], "labels": dict(c.labels),
         "services": placed.get(name, 0)} for name, c in sorted(clusters.items())]
    result["services"] = [
        {"name": s.name, "workload": s.workload,
         "cluster": s.instance.cluster if s.instance else None,
         "node": s.instance.node if s.instance else None,
         "pod": s.instance.pod if s.instance else None,
         "chain": s.chain, "moving": s.moving} for s in sorted(services.values(),
                                                               key=lambda s: s.name)]
    now = time.time()
    result["moves_in_flight"] = [
        {"id": m.id, "service": m.service, "status": str(m.status),
         "phase": str(m.phase) if m.phase else None, "from": m.from_cluster,
         "to": m.to_cluster, "epoch": m.epoch,
         "age_s": round(now - m.created_at, 1) if m.created_at else None}
        for m in sorted(in_flight, key=lambda m: m.created_at)]
    return result


def print_status(result: dict[str, Any]) -> None:
    table = Table("process", "pid", "alive", "restarts", "log",
                  title=f"lab {result['lab']} ({result['run_dir']})")
    for p in result["processes"]:
        pid = p["pid"] or p["recorded_pid"]
        table.add_row(str(p["role"]), str(pid or "-"),
                      "[green]yes[/]" if p["alive"] else "[red]no[/]", str(p["restarts"]),
                      Path(p["log"]).name if p["log"] else "-")
    if not result["processes"]:
        out.print(f"no process recorded under {result['run_dir']} (is the stack up?)")
    else:
        out.print(table)
    clusters = Table("cluster", "nodes", "services", "labels", title="clusters")
    for c in result["clusters"]:
        clusters.add_row(c["name"], ", ".join(c["nodes"]), str(c["services"]),
                         ", ".join(f"{k}={v}" for k, v in c["labels"].items()))
    if result["clusters"]:
        out.print(clusters)
    services = Table("service", "workload", "runs at", "pod", "moving", title="services")
    for s in result["services"]:
        where = f"{s['cluster']}/{s['node']}" if s["cluster"] else "[red]nowhere[/]"
        services.add_row(s["name"], s["workload"], where, s["pod"] or "-", s["moving"] or "")
    if result["services"]:
        out.print(services)
    moves = Table("move", "service", "from → to", "status", "phase", "age", title="in flight")
    for m in result["moves_in_flight"]:
        moves.add_row(m["id"], m["service"], f"{m['from']} → {m['to']}",
                      _status_text(m["status"]), m["phase"] or "-",
                      f"{m['age_s']:.0f} s" if m["age_s"] is not None else "-")
    if result["moves_in_flight"]:
        out.print(moves)
    else:
        out.print("no move in flight")
    if "error" in result:
        err.print(f"[yellow]{result['error']}[/]")


def status_command(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """The stack at a glance: processes, clusters, services, moves in flight.

    Each process with its PID, whether it is alive, its restarts and its log; each cluster
    with its nodes; each service with where it runs; each move in flight with its phase.
    """
    result = gather_status()
    if as_json:
        print(json.dumps(result))
    else:
        print_status(result)


# --- mobility moves ---

def _status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def _ms(value: object) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else "-"


def moves_table(moves: list[dict[str, Any]], *, title: str = "moves") -> Table:
    """Newest first; times in ms. No rules and one space between columns: a row fits 80
    columns, with the id and the route whole (one copies them); the rest gives way."""
    table = Table(title=f"{title} (times in ms)", box=None, header_style="bold underline",
                  pad_edge=False, padding=(0, 1, 0, 0))
    for col, justify, whole in (("move", "left", True), ("service", "left", False),
                                ("from→to", "left", True), ("status", "left", False),
                                ("phase", "left", False), ("total", "right", False),
                                ("freeze", "right", False)):
        table.add_column(col, justify=justify, no_wrap=whole)  # type: ignore[arg-type]
    for m in moves:
        table.add_row(
            str(m["id"]), str(m["service"]), f"{m['from_cluster']}→{m['to_cluster']}",
            _status_text(str(m["status"])), str(m.get("phase") or "-"),
            _ms(m.get("total_ms")), _ms(m.get("freeze_ms")))
    return table


class MovesError(RuntimeError):
    """The API could not be asked; says where it was looked for."""


def fetch_moves(api: httpx.Client, limit: int) -> list[dict[str, Any]]:
    try:
        resp = api.get("/v1/moves", params={"limit": limit})
    except httpx.HTTPError as exc:
        raise MovesError(f"API not reachable at {api.base_url}: {exc}") from exc
    if resp.status_code >= 400:
        fail(resp)
    body: list[dict[str, Any]] = resp.json()
    return body


def watch_view(api: httpx.Client, limit: int) -> RenderableType:
    """One frame of ``--watch``: the table, or what went wrong this time (the view goes on)."""
    stamp = time.strftime("%H:%M:%S")
    try:
        moves = fetch_moves(api, limit)
    except MovesError as exc:
        return Text(f"{stamp} {exc}", style="yellow")
    active = sum(1 for m in moves if m["status"] not in ("succeeded", "rolled_back", "failed"))
    return Group(moves_table(moves, title=f"moves at {stamp}: {active} in flight"),
                 Text("Ctrl-C to stop", style="dim"))


def moves_command(
    watch: Annotated[bool, typer.Option(
        "--watch", "-w", help="a live view, refreshed every second until Ctrl-C")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000,
                                       help="how many of the newest moves")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON list")] = False,
) -> None:
    """Recent moves, newest first: service, from → to, status, phase, total and freeze ms."""
    if watch and as_json:
        err.print("[red]--watch is a live view for a person; --json prints once[/]")
        raise typer.Exit(2)
    with api_client(timeout=5) as api:
        if not watch:
            try:
                moves = fetch_moves(api, limit)
            except MovesError as exc:
                err.print(f"[red]{exc}[/]")
                raise typer.Exit(1) from exc
            if as_json:
                print(json.dumps(moves))
            else:
                out.print(moves_table(moves))
            return
        try:
            with Live(watch_view(api, limit), console=out, auto_refresh=False) as live:
                while True:
                    time.sleep(WATCH_S)
                    live.update(watch_view(api, limit), refresh=True)
        except KeyboardInterrupt:
            return
