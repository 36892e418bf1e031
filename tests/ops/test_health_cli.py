"""``python -m app check`` prints the same dependency checks as ``GET /health``,
Docker and Tesseract included, and its exit code follows the required ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_check_prints_every_dependency_like_health(api, pg_database) -> None:
    out = subprocess.run([sys.executable, "-m", "app", "check", "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    report = json.loads(out.stdout)
    names = {d["name"]: d for d in report["dependencies"]}
    assert {"database", "broker", "redis", "storage", "tesseract", "docker"} <= set(names)
    assert names["database"]["status"] == names["broker"]["status"] == names["redis"]["status"] == "up"
    assert names["tesseract"]["required"] is False
    required_up = all(d["status"] == "up" for d in names.values() if d["required"])
    assert report["healthy"] is required_up and out.returncode == (0 if required_up else 1)

    health = api.client.get("/health", headers=api.admin)
    assert {d["name"] for d in health.get_json()["dependencies"]} == set(names)

    table = subprocess.run([sys.executable, "-m", "app", "check"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = table.stdout.splitlines()
    assert any(l.startswith("docker") for l in lines) and any(l.startswith("tesseract") for l in lines)
    assert lines[-1] in ("healthy", "UNHEALTHY")
