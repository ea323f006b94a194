"""The state SDK stands alone.

Aspects: every module of ``state_transfer`` imports with the orchestrator's packages
(``mobility``, ``workers``, ``api``, ``cli``, ``dataplane``) made unimportable, as in an
application that vendors only the SDK; its keys keep the project's ``mob:state:`` prefix that
the orchestrator re-exports.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import state_transfer
from mobility import keys
from state_transfer import keys as sdk_keys
from tests.conftest import REPO

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"mobility", "workers", "api", "cli", "dataplane"}:
            raise ImportError(f"the SDK imported {name}")
        return None
sys.meta_path.insert(0, Block())
import importlib
for m in sys.argv[1:]:
    importlib.import_module(m)
print("ok")
"""


def test_every_sdk_module_imports_without_the_orchestrator() -> None:
    mods = [f"state_transfer.{m.name}" for m in pkgutil.iter_modules(state_transfer.__path__)]
    assert "state_transfer.agent" in mods and "state_transfer.keys" in mods
    out = subprocess.run([sys.executable, "-c", BLOCKER, *mods], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_sdk_keys_are_the_orchestrators() -> None:
    assert keys.state_frames("mv-1") == sdk_keys.state_frames("mv-1") == "mob:state:mv-1:frames"
    assert keys.state_keys("mv-1") == [keys.state_frames("mv-1"), keys.state_acked("mv-1")]
