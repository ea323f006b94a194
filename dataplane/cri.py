"""Pods that a kubelet runs, as a node agent finds them: through the node's containerd (CRI).

On a real Kubernetes node the pod's network namespace is made by containerd's CRI plugin (and
CNI), not by the node agent, and the pod's files live in the kubelet's volume directories. A
node agent that wires NSM-style links into such a pod (WIRE, CUTOVER) finds, from the instance
name alone (the ``mobility.io/instance`` label every instance's pod carries, which the kubelet
hands to the CRI as a label of the pod sandbox):

- the sandbox's network namespace (from its OCI spec), which the agent then names like a lab
  pod's (a symlink in /run/netns), so every link operation works on it unchanged;
- the workload container's host PID, to pause and resume a client (signals, as on the lab);
- the pod's ``mobility-io`` ``emptyDir`` on the node (the workload's ready, paused, progress
  files), as the lab's ``io/`` directory.

Nothing here talks to the API server: the node's containerd knows its pods.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dataplane.containers import Containerd
from dataplane.errors import DataplaneError

log = logging.getLogger(__name__)

CRI_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin keeps its pods in
INSTANCE_LABEL = "mobility.io/instance"
KIND_LABEL = "io.cri-containerd.kind"
POD_UID_LABEL = "io.kubernetes.pod.uid"
IO_VOLUME = "mobility-io"


@dataclass(frozen=True)
class CriPod:
    sandbox: str
    uid: str
    netns: Path


class CriPods:
    """The pods of one node's containerd (``k8s.io`` namespace) and kubelet root directory."""

    def __init__(self, containerd: Containerd, kubelet_root: Path) -> None:
        self.containerd = containerd
        self.kubelet_root = kubelet_root

    def find(self, pod: str) -> CriPod | None:
        """The running sandbox of instance ``pod``, or None if this node has none."""
        ids = self.containerd.containers({INSTANCE_LABEL: pod, KIND_LABEL: "sandbox"})
        tasks = self.containerd.tasks()
        live = [i for i in ids if tasks.get(i, (0, ""))[1] == "RUNNING"]
        if not live:
            return None
        if len(live) > 1:
            raise DataplaneError(f"pod {pod}: {len(live)} running sandboxes on this node")
        info = self.containerd.container_info(live[0])
        namespaces = (((info.get("Spec") or {}).get("linux") or {}).get("namespaces") or [])
        netns = next((n.get("path") for n in namespaces if n.get("type") == "network"), None)
        uid = (info.get("Labels") or {}).get(POD_UID_LABEL)
        if not netns or not uid:
            raise DataplaneError(f"pod {pod}: its sandbox {live[0]} names no network "
                                 "namespace or pod uid")
        return CriPod(sandbox=live[0], uid=str(uid), netns=Path(netns))

    def io_dir(self, pod: CriPod) -> Path:
        return (self.kubelet_root / "pods" / pod.uid / "volumes" / "kubernetes.io~empty-dir"
                / IO_VOLUME)

    def workload_pid(self, pod: CriPod) -> int | None:
        """The host PID of the pod's (first) application container, if it runs."""
        ids = self.containerd.containers({POD_UID_LABEL: pod.uid, KIND_LABEL: "container"})
        tasks = self.containerd.tasks()
        for cid in ids:
            pid, status = tasks.get(cid, (0, ""))
            if status == "RUNNING" and pid:
                return pid
        return None
