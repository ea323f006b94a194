"""Identity allocation that survives a Redis restart: VNIs, link blocks (MACs and addresses),
pod numbers.

The counters live in Redis, whose append-only file is written once a second
(``appendfsync everysec``): a crash can lose the last second or two of increments, so a
counter can come back lower than identities already handed out, and the next link would get
the VNI of a live one (whose devices still sit on the nodes, and whose record may be lost with
the same second). So, before the first allocation of each Redis run (``INFO``'s ``run_id``
changes at every start), every counter is raised, in one script with the mark of that run, to
at least

- what the registry holds: every service's links (VNI, block) and instance, every deploy in
  flight's planned instance and links (its journal), every recorded move's source and target
  (pod numbers), so a counter that went back is rebuilt from the records that came back; plus
- a margin for what the lost second may have handed out to devices whose records were lost
  with it: large for VNIs and pod numbers (2**24 VNIs: a margin of 4,096 costs nothing), small
  for link blocks (16,256 /30s in 169.254.0.0/16; a lost block's devices can reuse a MAC and
  address only on another VNI, another segment).

A fresh Redis (no counter, no record) starts at the beginning, without margins.
"""

from __future__ import annotations

import re
from typing import cast

from mobility import keys
from mobility.errors import NotFound
from mobility.models import Instance
from mobility.store.base import unpack
from mobility.store.fleet import FleetStore

VNI_BASE = 1000  # FleetStore.next_vni: VNI = VNI_BASE + counter
VNI_MARGIN = 4096
BLOCK_MARGIN = 16
POD_MARGIN = 4096

# KEYS: the run mark, then the VNI, block and pod counters; ARGV: this run, then each floor.
# Raises each counter to its floor unless this run's mark is set already (one rebuild a run).
_RAISE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return 0 end
for i = 2, #KEYS do
  local cur = tonumber(redis.call('get', KEYS[i]) or '0')
  local floor = tonumber(ARGV[i])
  if floor > cur then redis.call('set', KEYS[i], floor) end
end
redis.call('set', KEYS[1], ARGV[1])
return 1
"""

_MAC = re.compile(r"^02:6d:([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):0[12]$")
_POD = re.compile(r"-(\d+)$")


def block_of(mac: str) -> int:
    """The link block a link end's MAC was made from (``mobility.deploying.link_identity``);
    0 for a MAC made otherwise."""
    m = _MAC.fullmatch(mac.lower())
    return int("".join(m.groups()), 16) if m else 0


def pod_number(pod: str) -> int:
    """The number in a pod's name (``<service>-<n>``, ``Registry.next_pod_index``); 0 if none."""
    m = _POD.search(pod)
    return int(m.group(1)) if m else 0


class IdentityStore(FleetStore):
    """``next_vni``, ``next_link_block`` and ``next_pod_index``, checked once per Redis run."""

    _counters = (keys.VNI_SEQ, keys.LINK_BLOCK_SEQ, keys.POD_SEQ)

    def next_vni(self) -> int:
        self.check_counters()
        return super().next_vni()

    def next_link_block(self) -> int:
        self.check_counters()
        return super().next_link_block()

    def next_pod_index(self) -> int:
        self.check_counters()
        return super().next_pod_index()

    def _run_id(self) -> str:
        return str(self.r.info("server")["run_id"])

    def check_counters(self) -> bool:
        """Raise the counters to what the registry holds (plus margins) if this Redis run has
        not been checked yet; True when this call did it."""
        run = self._run_id()
        mark = cast(bytes | None, self.r.get(keys.IDENTITY_RUN))
        if mark is not None and mark.decode() == run:
            return False
        floors = self.identity_floors()
        counters = cast(list[bytes | None], self.r.mget(list(self._counters)))
        fresh = mark is None and not any(counters) and not any(floors)
        margins = (0, 0, 0) if fresh else (VNI_MARGIN, BLOCK_MARGIN, POD_MARGIN)
        seen = [max(int(c or 0), f) for c, f in zip(counters, floors, strict=True)]
        done = self.r.eval(_RAISE, 1 + len(self._counters), keys.IDENTITY_RUN, *self._counters,
                           run, *(s + m for s, m in zip(seen, margins, strict=True)))
        return bool(done)

    def identity_floors(self) -> tuple[int, int, int]:
        """The highest VNI counter, link block and pod number the registry's records use."""
        vni = block = pod = 0
        instances: list[Instance] = []
        link_ids: list[str] = []
        for svc in self.services().values():
            if svc.instance is not None:
                instances.append(svc.instance)
            link_ids += svc.links
        for member in cast(set[bytes], self.r.smembers(keys.JOBS)):
            # a deploy in flight: its planned instance, the links it has made so far
            kind, _, name = member.decode().partition(":")
            raw = cast(bytes | None, self.r.get(keys.job(kind, name)))
            if raw is not None:
                job = unpack(raw)
                if job.get("instance"):
                    instances.append(Instance.from_dict(job["instance"]))
                link_ids += [str(x) for x in job.get("links") or ()]
        for move_id in cast(list[bytes], self.r.zrange(keys.MOVES, 0, -1)):
            raw = cast(bytes | None, self.r.get(keys.move(move_id.decode())))
            if raw is None:
                continue
            record = unpack(raw)
            instances += [Instance.from_dict(record[side]) for side in ("source", "target")
                          if record.get(side)]
        for link_id in set(link_ids):
            try:
                link = self.get_link(link_id)
            except NotFound:
                continue
            vni = max(vni, link.vni - VNI_BASE)
            block = max(block, *(block_of(e.mac) for e in link.ends))
        for inst in instances:
            pod = max(pod, pod_number(inst.pod))
        return vni, block, pod
