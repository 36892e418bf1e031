"""``python -m app locks list | clear``: an operator sees a held lock and clears a stuck one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.locks import named_lock

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", "locks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_stuck_lock_is_listed_and_cleared(redis_client, unique) -> None:
    name = f"stuck-{unique}"
    with named_lock(name, ttl=600) as held:
        assert held.acquired
        listed = _cli("list")
        assert listed.returncode == 0 and any(l.startswith(f"{name}\t") for l in listed.stdout.splitlines())
        cleared = _cli("clear", name)
        assert cleared.returncode == 0, cleared.stderr
        # The next run can take it now.
        with named_lock(name, ttl=5) as again:
            assert again.acquired
    assert redis_client.exists(f"lock:{name}") == 0
    missing = _cli("clear", name)
    assert missing.returncode != 0 and "no lock named" in missing.stderr
