"""The pod a reference workload runs on a real Kubernetes node, and what is refused.

Aspects: the same image and command line as on the lab, its files in an ``emptyDir`` at
``/run/mobility``, its own ready file as the readiness probe, never pulled (no registry); the
Deployment template gives the pod no service-account token and no service links; a workload
with no pod spec (a user's own image, not run on Kubernetes yet) is a clear, not retryable
FederationError at placement, not a crash.
"""

from __future__ import annotations

import pytest

from dataplane.lab import images
from dataplane.lab.pods import kube_pod_spec, workload_argv
from mobility.backends.kube.objects import deployment_template, pod_spec_of
from mobility.errors import FederationError


def test_a_reference_workload_runs_its_lab_command_line_with_its_ready_file_as_probe() -> None:
    spec = kube_pod_spec("echo", {"port": 7100})
    [c] = spec["containers"]
    assert c["image"] == images.reference_image("echo")
    assert c["imagePullPolicy"] == "Never"
    assert c["command"] == workload_argv("echo", {"port": 7100})
    assert c["readinessProbe"]["exec"]["command"] == ["test", "-e", "/run/mobility/ready"]
    assert c["volumeMounts"] == [{"name": "mobility-io", "mountPath": "/run/mobility"}]
    assert spec["volumes"] == [{"name": "mobility-io", "emptyDir": {}}]


def test_the_template_gives_no_token_and_keeps_the_parameters_as_environment() -> None:
    tpl = deployment_template(service="web", workload="echo", params={"port": 7100},
                              pod_spec=kube_pod_spec("echo", {"port": 7100}))
    pod = tpl["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert {"name": "MOBILITY_PARAM_PORT", "value": "7100"} in pod["containers"][0]["env"]


def test_a_workload_without_a_pod_spec_is_refused_clearly() -> None:
    with pytest.raises(FederationError, match="no pod spec for workload 'image'") as err:
        pod_spec_of(kube_pod_spec, "image", {})
    assert err.value.retryable is False
