"""``mobility demo --json``, the README's main job, end to end on a running lab stack.

Aspects: the command reuses the running control plane, moves the echo service core -> edge
under the 1,000 req/s probe, exits 0 and prints one JSON summary with every promised key, a
succeeded move, all six phases and 0 requests lost or duplicated, and what its probe saw on
``GET /metrics``; ``--chain --move`` moves a
middlebox of a chain across clusters; ``--stateful`` moves the session service with its state
and every counter continuing; the chain CLI without a token is refused (401), with one it works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cli.stack import Stack

KEYS = {"move_id", "status", "total_ms", "phases", "probes_sent", "probes_lost",
        "probes_duplicated", "from_cluster", "to_cluster"}


def demo(lab_stack: Stack, tmp_path: Path, *args: str) -> dict[str, object]:
    config = tmp_path / "lab.toml"
    config.write_text(
        f'name = "{lab_stack.plan.name}"\nunderlay = "{lab_stack.plan.underlay}"\n'
        + "".join(f'[[clusters]]\nname = "{c.name}"\nnodes = 2\nunderlay_mtu = {c.mtu}\n'
                  + "labels = { " + ", ".join(f'{k} = "{v}"' for k, v in c.labels.items())
                  + " }\n"
                  for c in lab_stack.plan.clusters))
    env = dict(os.environ, MOBILITY_LAB_NAME=lab_stack.plan.name,
               MOBILITY_LAB_CONFIG=str(config), MOBILITY_API_PORT=str(lab_stack.api_port),
               MOBILITY_STACK_REDIS_PORT=str(lab_stack.redis_port),
               MOBILITY_ENV_FILE=str(lab_stack.env_file))
    mobility = Path(sys.executable).parent / "mobility"
    proc = subprocess.run([str(mobility), "demo", "--json", *args], capture_output=True,
                          text=True, env=env, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary: dict[str, object] = json.loads(proc.stdout)
    return summary


def test_demo_json(lab_stack: Stack, tmp_path: Path) -> None:
    summary: dict[str, Any] = demo(lab_stack, tmp_path)
    assert set(summary) >= KEYS
    assert summary["status"] == "succeeded"
    assert (summary["from_cluster"], summary["to_cluster"]) == ("core", "edge")
    assert set(summary["phases"]) == {"admit", "place", "wire", "sync", "cutover", "release"}
    assert summary["probes_sent"] > 1000
    assert summary["probes_lost"] == 0 and summary["probes_duplicated"] == 0
    assert summary["total_ms"] > 0
    # what the probe saw is on GET /metrics (the demo reports it, once per move)
    with lab_stack.api_client() as api:
        text = api.get("/metrics").text
    sent = [float(line.split()[-1]) for line in text.splitlines()
            if line.startswith('mobility_probe_requests_total{result="sent"}')]
    assert sent and sent[0] >= summary["probes_sent"], text[-2000:]


def test_demo_chain_moves_a_middlebox(lab_stack: Stack, tmp_path: Path) -> None:
    summary: dict[str, Any] = demo(lab_stack, tmp_path, "--chain", "--move", "nat")
    assert set(summary) >= KEYS
    assert summary["chain"] == ["client", "fw", "nat", "server"]
    assert summary["moved"] == "nat" and summary["status"] == "succeeded"
    assert (summary["from_cluster"], summary["to_cluster"]) == ("edge", "core")
    assert summary["probes_lost"] == 0 and summary["probes_sent"] > 1000


def test_demo_stateful(lab_stack: Stack, tmp_path: Path) -> None:
    summary: dict[str, Any] = demo(lab_stack, tmp_path, "--stateful", "--state-mb", "16")
    assert {"state_bytes", "precopy_rounds", "freeze_ms", "counters_ok"} <= set(summary)
    assert summary["status"] == "succeeded" and summary["counters_ok"] is True
    assert summary["probes_lost"] == 0 and summary["state_bytes"] > 16 * 2**20


def test_chain_file_deploys_through_the_cli(lab_stack: Stack, tmp_path: Path) -> None:
    chain = tmp_path / "chain.toml"
    chain.write_text('name = "filed"\nrate = 200\n'
                     '[[elements]]\nname = "c"\nworkload = "probe"\ncluster = "core"\n'
                     '[[elements]]\nname = "mb"\nworkload = "middlebox"\ncluster = "edge"\n'
                     '[[elements]]\nname = "s"\nworkload = "echo"\ncluster = "core"\n')
    env = dict(os.environ, MOBILITY_API_PORT=str(lab_stack.api_port),
               MOBILITY_ENV_FILE=os.devnull)
    mobility = str(Path(sys.executable).parent / "mobility")
    proc = subprocess.run([mobility, "chain", "deploy", str(chain), "--json"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "401" in proc.stderr, proc.stderr  # no token: refused
    env["MOBILITY_TOKEN_FILE"] = str(lab_stack.token_file)
    proc = subprocess.run([mobility, "chain", "deploy", str(chain), "--json"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["services"] == ["filed-c", "filed-mb", "filed-s"]
    chain.write_text('name = "bad"\nelements = 3\n')
    proc = subprocess.run([mobility, "chain", "deploy", str(chain)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "elements" in proc.stderr
    proc = subprocess.run([mobility, "chain", "delete", "filed"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
