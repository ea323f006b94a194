"""Settings, grouped, built by a factory (never at import time), secrets never printed."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_ENV_FILE = "/run/service-mobility/stack.env"
DEV_REDIS_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    """``MOBILITY_*`` environment variables, then the lab stack's env file, then defaults."""

    model_config = SettingsConfigDict(env_prefix="MOBILITY_", extra="ignore",
                                      hide_input_in_errors=True)

    environment: Literal["development", "production"] = "development"
    redis_url: SecretStr = SecretStr(DEV_REDIS_URL)
    # Redis Sentinel (mobility.store.connecting): the sentinels ("host:port", a JSON list in
    # the environment) and the master's name; empty: redis_url's server, as it is. With
    # sentinels, redis_url gives only the user, password and database; the master is the one
    # the sentinels name. The sentinels' own password (requirepass), if they have one.
    redis_sentinels: tuple[str, ...] = ()
    redis_sentinel_master: str = "mobility"
    redis_sentinel_password: SecretStr = SecretStr("")
    # Where instances run: the local lab, or Kubernetes through KubeFed or Karmada.
    backend: Literal["lab", "kubefed", "karmada"] = "lab"
    kubeconfig: str | None = None  # the host (KubeFed) or Karmada API server; None: ~/.kube/config
    kube_context: str | None = None
    kube_namespace: str = "mobility"
    # On Kubernetes, who makes the links: "nsm" writes NSM's objects (NSM's forwarders would
    # act on them); "agents": the node agent on each node (MOBILITY_CRI_ADDRESS set there)
    # plumbs the VxLAN ends into the kubelet's pods and relays their state, as on the lab.
    kube_wiring: Literal["nsm", "agents"] = "nsm"
    nsm_domain: str = "cluster.local"
    kube_timeout_s: float = Field(default=10.0, gt=0)
    lab_name: str = "smlab"
    # Where the lab keeps its run files (the same variable dataplane.lab.topology reads).
    run_root: str = "/run/service-mobility"
    api_host: str = "127.0.0.1"
    api_port: int = 8470
    # Browser origins allowed to make state-changing requests (none by default), and to read
    # through CORS (CORS is off unless origins are named).
    api_origins: tuple[str, ...] = ()
    api_cors_origins: tuple[str, ...] = ()
    signals_per_minute: int = Field(default=600, ge=1)
    # The token the CLI and tools send (else read from ``token_file``, which the embedded
    # stack writes, 0600, for its own CLI and demo). Never printed.
    token: SecretStr = SecretStr("")
    token_file: str = ""
    # TLS on the API (both or neither): PEM files.
    api_tls_cert: str = ""
    api_tls_key: str = ""
    # Fault injection ("fail WIRE on purpose") is for tests and drills; off unless asked for.
    fault_injection: bool = False
    lease_ttl_s: float = Field(default=5.0, gt=0)
    # A deploy's, removal's or chain's journal lease. Longer than a move's: a move's lease is
    # compare-and-set and a stalled worker notices it lost it, but a journal's lapse makes the
    # reaper undo a deploy that is still running (a slow container start on a loaded node,
    # with two refreshes failing, was enough). Reaping a dead worker's deploy later costs
    # nothing but time.
    job_lease_ttl_s: float = Field(default=20.0, gt=0)
    # After a phase, the lease is held this long for the next phase's task to pick it up: a
    # Celery hop on a loaded machine can take seconds, and a move must not be taken over then.
    lease_handoff_s: float = Field(default=30.0, gt=0)
    node_call_timeout_s: float = Field(default=20.0, gt=0)
    # A removal's lock on its service expires: a removal is bounded by its node calls.
    removal_lock_ttl_s: float = Field(default=300.0, gt=0)
    # Compensation passes that leave target-side clean-up undone before the move is given up
    # as failed (what stays behind is named). Steps that make the source serve are retried
    # for as long as it takes: the move stays rolling_back until they are done.
    compensation_max_passes: int = Field(default=5, ge=1)
    ready_timeout_s: float = Field(default=15.0, gt=0)
    # Threads of the orchestration worker: a move holds one from ADMIT to its cutover (one
    # task), waiting on its nodes or on its state flowing, so this many moves are in flight at
    # once and the next waits in the queue. With eight, eight slow moves (a held phase, a long
    # SYNC) stopped every other move. Not unbounded: each node's agent runs its operations one
    # at a time, and moves piled on one node wait there past their node calls' timeouts.
    orchestrator_threads: int = Field(default=32, ge=1, le=1024)
    event_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    # The Redis URL as the applications' state agents reach it (in the lab: through the host
    # link, not loopback). Empty: the same as redis_url.
    state_redis_url: SecretStr = SecretStr("")
    state_ttl_s: int = Field(default=60, gt=0, description="life of a move's state keys after it")
    precopy_max_rounds: int = Field(default=8, ge=1, le=100)
    precopy_small_bytes: int = Field(default=1 << 20, ge=0,
                                     description="a round this small ends the pre-copy")
    # The freeze window's fixed cost beyond the final round (freeze, resume the target, switch
    # the peers), which the downtime budget's prediction adds (mobility.freeze_budget) until
    # recent moves measured it: 18 to 23 ms on a quiet lab with one peer.
    freeze_overhead_ms: float = Field(default=20.0, ge=0, le=60_000)
    state_stall_timeout_s: float = Field(default=30.0, gt=0)
    # Seals the cluster credentials a join or unjoin stores for its task (AES-256-GCM): 32
    # bytes in base64, e.g. from ``openssl rand -base64 32``. Needed in production (nothing
    # is stored without it); in development it is derived from the Redis URL when unset
    # (mobility.store.credentials.Sealer.from_settings). Never printed.
    credentials_key: SecretStr = SecretStr("")
    # The largest request body the API reads (413 beyond it, counted as it streams in).
    api_max_body_bytes: int = Field(default=1 << 20, ge=0)
    # Where imported images' archives are kept (so the lab's container runtime, which lives
    # in the run directory, gets them back at every start), and the largest one taken.
    image_dir: str = "/var/lib/service-mobility/images"
    image_max_bytes: int = Field(default=8 << 30, ge=0)
    # How many distinct signal series one service (or, cluster-level, one cluster) may hold.
    max_series_per_owner: int = Field(default=64, ge=1, le=4096)
    # Move notifications (mobility.subscriptions): the hosts and CIDRs a subscription's URL may
    # reach although they are loopback, link-local, private... (none by default; a JSON list,
    # e.g. '["127.0.0.1/32", "hooks.internal"]'); each attempt's timeout; attempts per event.
    subscription_allow_hosts: tuple[str, ...] = ()
    subscription_timeout_s: float = Field(default=3.0, gt=0, le=30)
    subscription_max_attempts: int = Field(default=6, ge=1, le=12)

    @property
    def agents_redis_url(self) -> str:
        return self.state_redis_url.get_secret_value() or self.redis_url.get_secret_value()

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> Settings:
        url = urlparse(self.redis_url.get_secret_value())
        if self.environment == "production" and not (url.password or "password=" in url.query):
            raise ValueError("MOBILITY_REDIS_URL must carry a password in production")
        return self

    @property
    def api_url(self) -> str:
        scheme = "https" if self.api_tls_cert else "http"
        return f"{scheme}://{self.api_host}:{self.api_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    env_file = os.environ.get("MOBILITY_ENV_FILE", DEFAULT_ENV_FILE)
    if os.path.exists(env_file):
        return Settings(_env_file=env_file)  # type: ignore[call-arg]
    return Settings()
