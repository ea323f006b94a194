"""Schemathesis against the app's own ``/openapi.json``, in-process, on a real Redis.

Aspects: every operation of the OpenAPI (read from the app itself, so a new route is fuzzed the
day it is added) gets schema-valid requests (positive mode) and schema-violating ones
(negative mode), derandomized and bounded (``EXAMPLES`` of each per operation), with an admin
token; half the valid requests name resources that exist (seeded: clusters, services, a
chain, a policy, an operation, a finished move with events), so the 202, 404 and 409 paths all
run. Every response is checked by all of schemathesis' default checks: no 5xx, the status
declared, the body matching the declared schema (the 422 body too), the content type and
headers declared, valid data not refused and invalid data not accepted. Each operation has a
time limit, so a hang fails it. Moves, deploys and schedules it asks for queue Celery tasks
in the test's own Redis database (the test checks they landed there), and no worker runs them.

Nothing is excluded. Where the API refuses a schema-valid request with 422 for a reason no
JSON Schema can state, ``REFUSES_VALID`` names the operation and the reason, and 422 is then
an accepted answer to a valid request there (and only there).
"""

from __future__ import annotations

import json
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from api.app import create_app
from mobility import keys, tokens
from mobility.chains import Chain, Element
from mobility.models import Cluster, Event, Instance, Move, MoveStatus, Node, Service
from mobility.operations import Operation
from mobility.policies import Condition, Policy, Target
from mobility.settings import Settings
from mobility.store import ImageRecord, Registry, new_move_id
from tests.conftest import RedisServer
from tests.integration.celery_binding import celery_bound_to

EXAMPLES = 25  # per operation and mode: about 1,800 requests in all
OPERATION_TIMEOUT_S = 90
DB = 10  # no other test uses it

# Operations that refuse some schema-valid requests with 422, and why the schema cannot say so.
REFUSES_VALID = {
    "POST /v1/moves": "'faults' needs MOBILITY_FAULT_INJECTION, off here as in production",
    "POST /v1/services": "'faults' needs MOBILITY_FAULT_INJECTION, off here as in production",
    "POST /v1/chains": "a chain is a probe, then middleboxes, then an echo (mobility.chains)",
    "POST /v1/clusters": "a kubeconfig is YAML with inline credentials (mobility.kubeconfigs)",
    "DELETE /v1/clusters/{name}": "a kubeconfig is YAML with inline credentials",
    "POST /v1/signals": "a sample's ts is at most 60 s ahead of now and 1 h behind it",
    "PUT /v1/policies/{policy_id}": "an id in the body, if any, is the path's",
    "PUT /v1/rebalance/config": "a maintenance window ends after it starts",
    "PUT /v1/rebalance/schedule": "a cron field's value is in its range (minute 0-59...)",
    "POST /v1/images": "the body is a tar archive of an image (a string in the schema)",
    "POST /v1/subscriptions": "a URL's host resolves to public addresses only (no userinfo, "
                              "no numeric tricks) unless an admin allows it",
}

CLUSTERS = ("core", "edge")
SERVICES = ("web", "db", "cache")
SEEDED_POLICY = "seeded"
SEEDED_IMAGE = "seeded/app:1"


def _operations() -> list[str]:
    """Every operation of the OpenAPI, as "METHOD /path" (no Redis needed to build it)."""
    spec = create_app(Settings(redis_url="redis://127.0.0.1:1/0")).openapi()  # type: ignore[arg-type]
    return [f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops]


@dataclass
class Seeded:
    """What exists before the fuzzing starts, by the kind of name that can point at it."""

    names: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Tally:
    examples: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    unnegatable: bool = False  # no request to it can break its schema
    statuses: Counter[int] = field(default_factory=Counter)


TALLIES: dict[str, Tally] = {}


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    reg = Registry.from_url(url)
    reg.r.flushdb()
    yield url
    reg.r.flushdb()
    reg.r.close()


def _seed(reg: Registry, image_dir: Path) -> Seeded:
    for i, name in enumerate(CLUSTERS):
        nodes = tuple(Node(name=f"n{j}", cluster=name, underlay_ip=f"198.51.{i}.{j + 1}")
                      for j in range(2))
        reg.put_cluster(Cluster(name=name, nodes=nodes, labels=(("tier", name),)))
    for i, name in enumerate(SERVICES):
        cluster = CLUSTERS[i % 2]
        reg.put_service(Service(name=name, workload="echo",
                                instance=Instance(cluster=cluster, node="n0", pod=f"p-{name}")))
    # a move that has ended, with its events: its stream ends (an open one would never)
    move = Move(id=new_move_id(), service="cache", from_cluster="core", to_cluster="edge",
                created_at=time.time())
    reg.create_move(move, peers=[])
    reg.add_event(Event(move_id=move.id, kind="status", ts=time.time(), detail="pending"),
                  ttl_s=3600)
    reg.update_move(move.id, lambda m: setattr(m, "status", MoveStatus.ROLLING_BACK))
    reg.finish_move(move.id, MoveStatus.ROLLED_BACK)
    op = Operation.new(kind="deploy", target="web", expires_s=3600)
    reg.put_operation(op)
    reg.put_policy(Policy(id=SEEDED_POLICY, name="seeded", services=("web",),
                          condition=Condition(series="latency_ms", aggregate="p95",
                                              comparator=">", threshold=20, duration_s=5),
                          target=Target(labels={"tier": "edge"})))
    reg.put_chain(Chain(name="web", elements=(
        Element(name="client", workload="probe", cluster="core"),
        Element(name="fw", workload="middlebox", cluster="core"),
        Element(name="server", workload="echo", cluster="edge"))))
    archive = image_dir / "seeded.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(tarfile.TarInfo("oci-layout"))
    reg.put_image(ImageRecord(name=SEEDED_IMAGE, digest="sha256:" + "0" * 64, size=1,
                              imported_at=time.time(), source="import",
                              entrypoint=("python3",), archive=str(archive)))
    spare, _ = tokens.mint(role=tokens.Role.VIEWER, name="fuzz spare - may be revoked")
    reg.put_token(spare)
    return Seeded(names={
        "cluster": list(CLUSTERS), "service": list(SERVICES), "move": [move.id],
        "operation": [op.id], "policy": [SEEDED_POLICY], "token": [spare.id],
        "chain": ["web"], "image": [SEEDED_IMAGE],
    })


@dataclass
class Fuzz:
    schema: Any  # schemathesis' OpenApiSchema
    seeded: Seeded
    registry: Registry
    auth: dict[str, str]  # the admin token's header, for requests made by hand


@pytest.fixture(scope="module")
def fuzz(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    """The app, on its own Redis database, seeded; its schema, as schemathesis loads it."""
    reg = Registry.from_url(redis_url)
    record, secret = tokens.mint(role=tokens.Role.ADMIN, name="fuzz")
    reg.put_token(record)
    image_dir = tmp_path_factory.mktemp("images")  # uploads land here, not on the host's
    seeded = _seed(reg, image_dir)
    with celery_bound_to(redis_url):
        app = create_app(Settings(redis_url=redis_url,  # type: ignore[arg-type]
                                  image_dir=str(image_dir)))
        config = schemathesis.Config.from_dict({
            "auth": {"openapi": {"HTTPBearer": {"bearer": secret}}, "auto-signup": False},
            "request-timeout": 20,
            "operations": [
                {"include-name": label,
                 "checks": {"positive_data_acceptance": {
                     "expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]}}}
                for label in REFUSES_VALID],
        })
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
        yield Fuzz(schema=schema, seeded=seeded, registry=reg,
                   auth={"Authorization": f"Bearer {secret}"})
        _summary()
    reg.r.close()


def _kind_of(label: str, param: str) -> str | None:
    """Which seeded kind a path parameter or body field of ``label`` names."""
    path = label.split(" ", 1)[1]
    return {
        "move_id": "move", "op_id": "operation", "policy_id": "policy", "token_id": "token",
        "service": "service", "to_cluster": "cluster", "cluster": "cluster",
        "name": ("service" if path.startswith("/v1/services/") else
                 "cluster" if path.startswith("/v1/clusters/") else
                 "chain" if path.startswith("/v1/chains/") else
                 "image" if path.startswith("/v1/images/") else None),
    }.get(param)


def _name_existing(case: Any, label: str, seeded: Seeded, data: st.DataObject) -> None:
    """Point a valid case's names at seeded resources (still valid: they match the
    patterns), so the paths past "does it exist" run too."""
    for param in list(case.path_parameters or {}):
        kind = _kind_of(label, param)
        if kind in seeded.names:
            case.path_parameters[param] = data.draw(st.sampled_from(seeded.names[kind]))
    if isinstance(case.body, dict):
        for key in list(case.body):
            kind = _kind_of(label, key) if key != "name" else None
            if kind in seeded.names and isinstance(case.body[key], str):
                case.body[key] = data.draw(st.sampled_from(seeded.names[kind]))


def _run(label: str, mode: GenerationMode, schema: Any, seeded: Seeded, tally: Tally) -> None:
    operation = schema.find_operation_by_label(label)
    assert operation is not None, label

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
              report_multiple_bugs=False)
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def check(case: Any, data: st.DataObject) -> None:
        if mode is GenerationMode.POSITIVE and data.draw(st.booleans()):
            _name_existing(case, label, seeded, data)
        tally.examples += 1
        try:
            response = case.call()
            tally.statuses[response.status_code] += 1
            case.validate_response(response, transport_kwargs={})
        except BaseExceptionGroup as group:  # schemathesis' FailureGroup: every failed check
            tally.failures.append(f"{mode.value}: {group}")
        except Exception as exc:  # a crash is a finding too, shown with its case
            tally.failures.append(f"{mode.value}: {type(exc).__name__}: {exc}\n"
                                  f"{case.as_curl_command()}")

    try:
        check()
    except Unsatisfiable:
        # no parameter, no body and no token (GET /healthz): there is nothing to make invalid
        raw = operation.definition.raw
        assert mode is GenerationMode.NEGATIVE, label
        assert not (raw.get("parameters") or raw.get("requestBody") or raw.get("security"))
        tally.unnegatable = True


def _summary() -> None:
    ops = len(TALLIES)
    examples = sum(t.examples for t in TALLIES.values())
    failures = sum(len(t.failures) for t in TALLIES.values())
    seconds = sum(t.seconds for t in TALLIES.values())
    statuses: Counter[int] = Counter()
    for t in TALLIES.values():
        statuses.update(t.statuses)
    print(json.dumps({"fuzz": {"operations": ops, "examples": examples, "failures": failures,
                               "seconds": round(seconds, 1),
                               "statuses": dict(sorted(statuses.items()))}}))
    for label, t in TALLIES.items():
        codes = " ".join(f"{c}x{n}" for c, n in sorted(t.statuses.items()))
        print(f"  {label}: {t.examples} examples, {len(t.failures)} failures, "
              f"{t.seconds:.1f} s, {codes}{' (nothing to negate)' if t.unnegatable else ''}")


@pytest.mark.timeout(OPERATION_TIMEOUT_S)
# celery-redbeat 2.4 warns of its own next release (redbeat_redis_options) whenever the API
# saves or reads the schedule; that is the tool's deprecation, not a finding of this test.
@pytest.mark.filterwarnings(
    "ignore:RedBeat will stop falling back to broker_transport_options:DeprecationWarning")
@pytest.mark.parametrize("label", _operations())
def test_operation(label: str, fuzz: Fuzz) -> None:
    tally = TALLIES.setdefault(label, Tally())
    started = time.monotonic()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        _run(label, mode, fuzz.schema, fuzz.seeded, tally)
    tally.seconds = time.monotonic() - started
    shown = "\n\n".join(tally.failures[:5])
    assert not tally.failures, f"{len(tally.failures)} failures in {label}:\n\n{shown}"


@pytest.mark.filterwarnings(
    "ignore:RedBeat will stop falling back to broker_transport_options:DeprecationWarning")
def test_the_tasks_it_asked_for_landed_in_its_own_redis(
        fuzz: Fuzz) -> None:
    """Runs after the operations (file order): every 202 they got queued a task in DB (an
    abort is recorded on its move instead), and nobody ran it; one more deploy and a schedule,
    by hand, land there too (so this holds when the operations were deselected)."""
    schema, reg = fuzz.schema, fuzz.registry
    accepted = sum(t.statuses[202] for label, t in TALLIES.items()
                   if label != "POST /v1/moves/{move_id}/abort")
    def queued_tasks() -> int:  # a move's start waits in the queue's priority list
        return sum(int(reg.r.llen(q)) for q in (
            "orchestration", *(f"orchestration{keys.KOMBU_PRIORITY_SEP}{p}"
                               for p in keys.KOMBU_PRIORITY_STEPS)))

    queued = queued_tasks()
    assert queued >= accepted, (queued, accepted)
    deploy = schema.find_operation_by_label("POST /v1/services")
    body = {"name": "late", "workload": "echo", "cluster": "core"}
    r = deploy.Case(body=body).call(headers=fuzz.auth)
    assert r.status_code == 202, r.text
    assert queued_tasks() == queued + 1
    put = schema.find_operation_by_label("PUT /v1/rebalance/schedule")
    assert put.Case(body={"every_s": 60}).call(headers=fuzz.auth).status_code == 200
    assert reg.r.exists(f"{keys.REDBEAT_PREFIX}rebalance"), "the schedule went elsewhere"
