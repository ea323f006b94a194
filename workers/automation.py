"""Beat-driven moves: the policy tick and the scheduled rebalancer."""

from __future__ import annotations

import logging
import time

from mobility import automation
from mobility.moving import MoveRequests
from mobility.store import RebalanceRun
from workers.app import app
from workers.canvas import start_move
from workers.moves import engine, registry

log = logging.getLogger(__name__)


def _requests() -> MoveRequests:
    e = engine()
    return MoveRequests(registry=e.registry, settings=e.settings)


@app.task(name="policies.tick")
def tick() -> dict[str, object]:
    """Evaluate every policy; start the moves they call for."""
    decisions = automation.evaluate(registry())
    started, refused = automation.start_decided(_requests(), decisions, start_move)
    registry().count_policy_tick()
    if started or refused:
        log.info("policies started %s, refused %s", started, refused)
    return {"started": started, "refused": refused}


@app.task(name="rebalance.run")
def rebalance() -> dict[str, object]:
    """Plan and start a rebalance; the plan run is kept for ``GET /v1/rebalance/last``."""
    plan = automation.plan(registry())
    started, refused = automation.run_plan(_requests(), plan, start_move)
    run = RebalanceRun.of(at=time.time(), plan=plan, started=started, refused=refused)
    registry().put_last_rebalance(run)
    log.info("rebalance: %d moves started, %d refused", len(started), len(refused))
    return run.to_dict()
