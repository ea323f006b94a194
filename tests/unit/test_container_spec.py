"""A deploy request's container settings: every bad value is refused naming its field, and
a good one comes back as the spec the node agent runs (mobility.workloads.check_container)."""

from __future__ import annotations

import pytest

from mobility import workloads
from mobility.errors import Invalid
from mobility.models import IMAGE_WORKLOAD, ContainerSpec, Port, Service


def check(**raw: object) -> tuple[str, ContainerSpec]:
    workload = raw.pop("workload", None)
    return workloads.check_container(workload, raw)  # type: ignore[arg-type]


def test_a_user_image_with_everything() -> None:
    name, spec = check(image="example.org/team/counter:1", command=["python3", "/app/c.py"],
                       args=["--verbose"], env={"PORT": "7000"},
                       ports=[7000, {"port": 8080, "protocol": "tcp"}], state="sdk",
                       resources={"cpu": "500m", "memory": "128Mi"})
    assert name == IMAGE_WORKLOAD
    assert spec.image == "example.org/team/counter:1"
    assert spec.ports == (Port(7000, "udp"), Port(8080, "tcp"))
    assert (spec.cpu, spec.memory, spec.state) == (0.5, 128 * 2**20, "sdk")
    assert ContainerSpec.from_dict(spec.to_dict()) == spec


def test_an_image_without_a_tag_is_latest() -> None:
    assert check(image="counter")[1].image == "counter:latest"
    assert check(image="localhost:5000/counter")[1].image == "localhost:5000/counter:latest"


def test_a_built_in_workload_takes_resources_only() -> None:
    name, spec = check(workload="echo", resources={"memory": 64 * 2**20, "cpu": 1})
    assert (name, spec.image, spec.memory, spec.cpu) == ("echo", None, 64 * 2**20, 1.0)
    with pytest.raises(Invalid, match=r"^command:"):
        check(workload="echo", command=["sh"])


@pytest.mark.parametrize(("raw", "field"), [
    ({}, "workload/image"),
    ({"workload": "echo", "image": "x:1"}, "workload/image"),
    ({"image": "Upper:1"}, "image"),
    ({"image": "x:1", "ports": [0]}, "ports[0].port"),
    ({"image": "x:1", "ports": [70000]}, "ports[0].port"),
    ({"image": "x:1", "ports": [{"port": 7, "protocol": "sctp"}]}, "ports[0].protocol"),
    ({"image": "x:1", "ports": [7, 7]}, "ports[1]"),
    ({"image": "x:1", "ports": [True]}, "ports[0]"),
    ({"image": "x:1", "resources": {"memory": "lots"}}, "resources.memory"),
    ({"image": "x:1", "resources": {"memory": "1Ki"}}, "resources.memory"),
    ({"image": "x:1", "resources": {"memory": "100Gi"}}, "resources.memory"),
    ({"image": "x:1", "resources": {"cpu": "0m"}}, "resources.cpu"),
    ({"image": "x:1", "resources": {"cpu": -1}}, "resources.cpu"),
    ({"image": "x:1", "resources": {"cpu": float("nan")}}, "resources.cpu"),
    ({"image": "x:1", "resources": {"gpu": 1}}, "resources"),
    ({"image": "x:1", "env": {"1BAD": "x"}}, "env"),
    ({"image": "x:1", "env": {"MOBILITY_STATE_SOCKET": "/x"}}, "env.MOBILITY_STATE_SOCKET"),
    ({"image": "x:1", "env": {"A": 1}}, "env.A"),
    ({"image": "x:1", "env": {"A": "x\nB=y"}}, "env.A"),
    ({"image": "x:1", "command": "python3 app.py"}, "command"),
    ({"image": "x:1", "args": ["a\x00b"]}, "args[0]"),
    ({"image": "x:1", "state": "redis"}, "state"),
])
def test_a_bad_value_names_its_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(Invalid) as info:
        check(**raw)
    assert str(info.value).startswith(field + ":"), str(info.value)


@pytest.mark.parametrize(("value", "expected"), [
    (268435456, 268435456), ("256Mi", 256 * 2**20), ("1Gi", 2**30), ("512M", 512 * 10**6),
    ("1.5Gi", int(1.5 * 2**30)),
])
def test_memory_quantities(value: object, expected: int) -> None:
    assert workloads.parse_memory(value) == expected


@pytest.mark.parametrize(("value", "expected"), [(0.5, 0.5), ("250m", 0.25), ("2", 2.0), (1, 1.0)])
def test_cpu_quantities(value: object, expected: float) -> None:
    assert workloads.parse_cpu(value) == expected


def test_stateful_and_serving_port() -> None:
    sdk = Service(name="c", workload=IMAGE_WORKLOAD,
                  container=ContainerSpec(image="c:1", ports=(Port(9000),), state="sdk"))
    plain = Service(name="e", workload="echo", params={"port": 7100})
    assert workloads.is_stateful(sdk) and not workloads.is_stateful(plain)
    assert workloads.is_stateful(Service(name="s", workload="sessions"))
    assert (workloads.serving_port(sdk), workloads.serving_port(plain)) == (9000, 7100)


def test_a_service_record_keeps_its_container() -> None:
    svc = Service(name="c", workload=IMAGE_WORKLOAD,
                  container=ContainerSpec(image="c:1", env=(("A", "b"),), memory=2**27))
    assert Service.from_dict(svc.to_dict()) == svc
    old = svc.to_dict()
    del old["container"]  # a record written before containers: the defaults
    assert Service.from_dict(old).container == ContainerSpec()
