"""What environment a lab workload gets from its node agent (dataplane.lab.pods.workload_env).

Aspects: only the allowed variables pass (how to run Python, the locale, the fault-injection
switch); the agent's Redis URL, its env file and every other ``MOBILITY_*`` setting, and any
other variable of the agent's, stay behind; PATH is always set (the agent runs ``ip``).
"""

from __future__ import annotations

from dataplane.lab.pods import workload_env

AGENT_ENV = {
    "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": "/opt/app",
    "MOBILITY_REDIS_URL": "redis://mob-agent-core-n1:s3cr3t@198.18.255.253:6391/0",
    "MOBILITY_STATE_REDIS_URL": "redis://mob-state:s3cr3t@198.18.255.253:6391/0",
    "MOBILITY_ENV_FILE": "/run/service-mobility/lab/redis/mob-agent-core-n1.env",
    "MOBILITY_NODE": "core/n1", "MOBILITY_LAB_NAME": "lab", "MOBILITY_FAULT_INJECTION": "1",
    "REDISCLI_AUTH": "s3cr3t", "HOME": "/root", "SSH_AUTH_SOCK": "/tmp/agent.sock",
}


def test_only_the_allowed_variables_pass() -> None:
    env = workload_env(AGENT_ENV)
    assert env == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": "/opt/app",
                   "MOBILITY_FAULT_INJECTION": "1", "PYTHONUNBUFFERED": "1"}
    assert "s3cr3t" not in repr(env)


def test_path_is_always_set() -> None:
    assert workload_env({})["PATH"]
