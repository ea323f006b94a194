"""The Redis-backed registry, in parts over one base (packing, transactions, Lua):

- ``fleet``: clusters, services, links, identity allocations, path health;
- ``moves``: moves, service locks, leases, events and the one event read loop;
- ``automation``: signal series, policies, rebalancing configuration and last run;
- ``chains``: service chains;
- ``operations``: long operations (deploys, joins) that callers poll instead of waiting;
- ``tokens``: API token digests and rate windows;
- ``jobs``: journals of deploys and removals, so a dead worker's half-done one is finished;
- ``images``: the catalogue of images the container runtime holds (what a deploy may name);
- ``subscriptions``: move notifications' subscriptions, sealed secrets and delivery records.

Each part is a class of its own over :class:`~mobility.store.base.StoreBase` and can be used
alone; :class:`Registry` is all of them over one connection, because a phase reads the fleet
and writes its move in one step. Records are msgpack blobs under keys from
:mod:`mobility.keys`; every method takes and returns typed records, never raw dicts.
"""

from __future__ import annotations

from mobility.store.automation import AutomationStore, RebalanceRun
from mobility.store.base import StoreBase
from mobility.store.chains import ChainStore
from mobility.store.connecting import SentinelConfig, connect
from mobility.store.credentials import CredentialStore
from mobility.store.fleet import FleetStore
from mobility.store.identities import IdentityStore
from mobility.store.images import ImageRecord, ImageStore
from mobility.store.jobs import Job, JobStore
from mobility.store.moves import EventBatch, MoveStore, new_move_id
from mobility.store.operations import OperationStore
from mobility.store.subscriptions import SubscriptionStore
from mobility.store.tokens import TokenStore

__all__ = ["AutomationStore", "ChainStore", "CredentialStore", "EventBatch", "FleetStore",
           "ImageRecord", "ImageStore", "Job", "JobStore", "MoveStore", "OperationStore",
           "RebalanceRun", "Registry", "StoreBase", "SubscriptionStore", "TokenStore",
           "new_move_id"]


class Registry(IdentityStore,  # first: its allocations check the counters after a restart
               FleetStore, MoveStore, AutomationStore, ChainStore, OperationStore, TokenStore,
               CredentialStore, JobStore, ImageStore, SubscriptionStore):
    """The whole registry over one Redis connection."""

    @classmethod
    def from_url(cls, url: str, *, sentinel: SentinelConfig | None = None) -> Registry:
        """``url``'s user on the master: through ``sentinel``, or the settings' sentinels,
        or (none set) directly (:mod:`mobility.store.connecting`)."""
        return cls(connect(url, sentinel=sentinel or SentinelConfig.from_settings()))
