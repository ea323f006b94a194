"""``mobility image ...`` and ``mobility deploy FILE``: a user's own images and services.

Every command goes through the API, as ``mobility move`` does: an import uploads the archive
(admin token), the API's orchestrator loads it into the lab's container runtime and records
it in the catalogue that deploys are checked against. ``build`` packs a root filesystem
directory into an OCI archive here (no docker needed), then imports it the same way.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.client import ApiClient, api_client
from cli.output import err, fail, out
from dataplane import images

image_app = typer.Typer(help="Container images: import, build, list, remove (no registry "
                             "needed).", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]
CHUNK = 1 << 20


def _file_chunks(path: Path, total: int, *, show: bool) -> Any:
    sent, last = 0, 0.0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sent += len(chunk)
            if show and (time.monotonic() - last > 0.5 or sent == total):
                last = time.monotonic()
                err.print(f"  uploading {sent >> 20}/{max(total >> 20, 1)} MiB", end="\r")
            yield chunk
    if show:
        err.print()


def upload(api: ApiClient, path: Path, *, source: str = "import",
           show: bool = True) -> dict[str, Any]:
    """Upload an archive to ``POST /v1/images`` and wait for its import; the operation's
    result (the image names imported)."""
    total = path.stat().st_size
    follow, api.follow = api.follow, False  # the operation's result is what we want
    try:
        resp = api.post(f"/v1/images?source={source}",
                        content=_file_chunks(path, total, show=show),
                        headers={"Content-Type": "application/x-tar",
                                 "Content-Length": str(total)})
    finally:
        api.follow = follow
    if resp.status_code >= 400:
        fail(resp)
    op = resp.json()["operation"]
    if show:
        err.print("  importing into the lab's container runtime")
    deadline = time.monotonic() + api.op_timeout
    while op["status"] not in ("succeeded", "failed"):
        if time.monotonic() > deadline:
            err.print(f"[red]the import ({op['id']}) is still {op['status']}[/]")
            raise typer.Exit(1)
        time.sleep(0.2)
        got = api.get(op["links"]["self"])
        if got.status_code >= 400:
            fail(got)
        op = got.json()
    if op["status"] == "failed":
        err.print(f"[red]import failed:[/] {op.get('error')}")
        raise typer.Exit(1)
    result: dict[str, Any] = op.get("result") or {}
    return result


@image_app.command("import")
def image_import(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                                      readable=True)],
                 as_json: JsonOpt = False) -> None:
    """Import an OCI image archive or a `docker save` archive."""
    try:
        info = images.inspect_archive(file)
    except ValueError as exc:
        err.print(f"[red]{file}:[/] {exc}")
        raise typer.Exit(2) from exc
    with api_client(timeout=900) as api:
        result = upload(api, file, show=not as_json)
    if as_json:
        print(json.dumps(result))
    else:
        out.print(f"imported {', '.join(result.get('images', [])) or '(nothing)'} "
                  f"({info.kind} archive)")


@image_app.command("build")
def image_build(
    directory: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                              help="a root filesystem (or, with --from, "
                                                   "the files to add on top)")],
    tag: Annotated[str, typer.Option("--tag", "-t", help="NAME:TAG")],
    entrypoint: Annotated[str | None, typer.Option(
        help="the command, as a JSON list ('[\"python3\", \"/app/counter.py\"]') or words")]
        = None,
    cmd: Annotated[str | None, typer.Option(help="default args, as a JSON list or words")]
        = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="NAME=VALUE")] = None,
    workdir: Annotated[str | None, typer.Option(help="working directory")] = None,
    base: Annotated[str | None, typer.Option(
        "--from", help="an imported image to build on (e.g. mobility/python:<tag>, see "
                       "`mobility image ls`) or an OCI archive file")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="also keep the archive here")] = None,
    no_import: Annotated[bool, typer.Option("--no-import", help="only write --output")]
        = False,
    as_json: JsonOpt = False,
) -> None:
    """Pack DIRECTORY into an OCI image (one layer) and import it."""
    try:
        name = images.check_name(tag)
        env_map = dict(_pair(e) for e in env or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if no_import and output is None:
        raise typer.BadParameter("--no-import needs --output")
    with tempfile.TemporaryDirectory(prefix="mobility-build-") as tmp, \
            api_client(timeout=900) as api:
        base_archive = None
        if base is not None:
            base_archive = Path(base) if Path(base).is_file() else _export(api, base, Path(tmp))
        archive = output or Path(tmp) / "image.tar"
        images.build_archive(archive, name=name, layers=[directory], base=base_archive,
                             entrypoint=_words(entrypoint), cmd=_words(cmd), env=env_map or None,
                             workdir=workdir)
        size = archive.stat().st_size
        if not as_json:
            err.print(f"built {name}: {size >> 20} MiB archive")
        result = {"images": [name], "archive": str(output) if output else None}
        if not no_import:
            result = {**upload(api, archive, source="build", show=not as_json),
                      "archive": str(output) if output else None}
    if as_json:
        print(json.dumps(result))
    else:
        out.print(f"built and imported {name}" if not no_import else f"wrote {output}")


def resolve(api: ApiClient, name: str) -> str:
    """``name`` as the catalogue has it: a name without a tag is the newest image of that
    repository (``mobility/python`` is the reference base of the running stack)."""
    if ":" in name.rsplit("/", 1)[-1]:
        return name
    resp = api.get("/v1/images")
    if resp.status_code >= 400:
        fail(resp)
    same = [i for i in resp.json() if i["name"].rsplit(":", 1)[0] == name]
    if not same:
        raise typer.BadParameter(f"--from {name}: no such image (see `mobility image ls`)")
    return str(max(same, key=lambda i: i["imported_at"])["name"])


def _export(api: ApiClient, name: str, into: Path) -> Path:
    """A base image the stack holds, as an archive (GET /v1/images/{name}/archive)."""
    name = resolve(api, name)
    path = into / "base.tar"
    with api.stream("GET", f"/v1/images/{name}/archive") as resp:
        if resp.status_code >= 400:
            resp.read()
            fail(resp)
        with open(path, "wb") as fh:
            for chunk in resp.iter_bytes(CHUNK):
                fh.write(chunk)
    return path


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--env {text!r}: NAME=VALUE")
    return name, value


def _words(text: str | None) -> list[str] | None:
    if text is None:
        return None
    if text.strip().startswith("["):
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise typer.BadParameter(f"{text!r}: a JSON list of strings")
        return value
    return text.split()


@image_app.command("ls")
def image_ls(as_json: JsonOpt = False) -> None:
    """The images the stack can run."""
    with api_client(timeout=60) as api:
        resp = api.get("/v1/images")
    if resp.status_code >= 400:
        fail(resp)
    rows = resp.json()
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("image", "size", "source", "entrypoint")
    for r in rows:
        table.add_row(r["name"], f"{r['size'] / 2**20:.1f} MiB", r["source"],
                      " ".join(r.get("entrypoint") or r.get("cmd") or []))
    out.print(table)


@image_app.command("rm")
def image_rm(name: str) -> None:
    """Remove an image (refused while a service runs it)."""
    with api_client(timeout=120) as api:
        resp = api.delete(f"/v1/images/{name}")
    if resp.status_code >= 400:
        fail(resp)
    out.print(f"removed {name}")


def service_request(path: Path) -> dict[str, Any]:
    """The body of ``POST /v1/services`` from a service file (TOML or YAML).

    The file holds the same fields as the API: ``name``, ``cluster``, and either
    ``workload`` (+ ``params``) or ``image`` with ``command``, ``args``, ``env``, ``ports``,
    ``resources`` and ``state``; plus ``peers``.
    """
    text = path.read_bytes()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            import tomllib

            raw = tomllib.loads(text.decode())
    except Exception as exc:  # the parsers' errors share no base class
        raise typer.BadParameter(f"{path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise typer.BadParameter(f"{path}: a service file is a mapping of fields")
    return raw


def deploy(path: Path, *, as_json: bool) -> None:
    body = service_request(path)
    with api_client(timeout=600) as api:
        resp = api.post("/v1/services", json=body)
    if resp.status_code >= 400:
        fail(resp)
    svc = resp.json()
    if as_json:
        print(json.dumps(svc))
        return
    inst = svc.get("instance") or {}
    out.print(f"service {svc['name']} runs in {inst.get('cluster')}/{inst.get('node')} "
              f"(pod {inst.get('pod')}, image {svc['container']['image'] or svc['workload']})")
