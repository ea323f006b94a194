"""What the ``mobility`` commands print: one console for results, one for errors, and the one
way an API error ends a command."""

from __future__ import annotations

from typing import NoReturn

import httpx
import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)


def fail(resp: httpx.Response) -> NoReturn:
    """Print the API's ``detail`` (or the body, if it is not JSON) and exit 1."""
    try:
        detail = resp.json().get("detail")
    except ValueError:
        detail = resp.text
    err.print(f"[red]HTTP {resp.status_code}:[/] {detail}")
    raise typer.Exit(1)
