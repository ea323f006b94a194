"""How fast node agents repair drift: a link end deleted under a running service.

Usage: .venv/bin/python -m bench.drift [--runs 5]

Brings the default lab stack up if needed, deploys an echo service and a probe client, then
``--runs`` times deletes the service's VxLAN device (``nsm-1``) in its pod and times until the
device is back and the client gets replies again. Prints one JSON object with ``runs``,
``device_back_ms_p50``, ``traffic_back_ms_p50`` and their maxima. The same-run baseline is
the reconcile interval (``interval_ms``): repair cannot beat it on average.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

import httpx

from cli.demo import remove_demo_services, wait_probe
from cli.stack import default_stack
from dataplane.netlink import Netlink
from workers.reconciling import INTERVAL_S

SVC, CLIENT = "demo-echo", "demo-client"


def received(path: str) -> int:
    try:
        with open(path) as fh:
            return int(json.load(fh)["received"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    stack = default_stack()
    plan = stack.plan
    stack.up()
    device, traffic = [], []
    with httpx.Client(base_url=stack.api_url, timeout=120) as api:
        remove_demo_services(api)
        api.post("/v1/services", json={"name": SVC, "workload": "echo",
                                       "cluster": "core"}).raise_for_status()
        r = api.post("/v1/services", json={"name": CLIENT, "workload": "probe",
                                           "cluster": "core", "peers": [SVC]})
        r.raise_for_status()
        progress = str(plan.run_dir / "pods" / r.json()["instance"]["pod"] / "progress.json")
        wait_probe(plan.run_dir / "pods" / r.json()["instance"]["pod"] / "progress.json",
                   received=250, timeout=10)
        ns = plan.pod_namespace(api.get(f"/v1/services/{SVC}").json()["instance"]["pod"])
        for _ in range(args.runs):
            time.sleep(1.3)  # land at a different point of the reconcile cycle each run
            subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "del", "nsm-1"], check=True)
            t0 = time.monotonic()
            before = received(progress)
            got_device = got_traffic = None
            while got_traffic is None and time.monotonic() - t0 < 30:
                if got_device is None:
                    with Netlink(ns) as nl:
                        if nl.exists("nsm-1"):
                            got_device = time.monotonic() - t0
                if got_device is not None and received(progress) > before + 20:
                    got_traffic = time.monotonic() - t0
                time.sleep(0.01)
            device.append((got_device or 30.0) * 1000)
            traffic.append((got_traffic or 30.0) * 1000)
        remove_demo_services(api)
    print(json.dumps({
        "runs": args.runs,
        "interval_ms": INTERVAL_S * 1000,
        "device_back_ms_p50": round(statistics.median(device), 1),
        "device_back_ms_max": round(max(device), 1),
        "traffic_back_ms_p50": round(statistics.median(traffic), 1),
        "traffic_back_ms_max": round(max(traffic), 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
