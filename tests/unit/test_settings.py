"""Settings: embedded defaults, validation naming the variable, and the generated docs page."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.configdoc import DOC_PATH, render
from app.settings import ROOT, Settings, SettingsError, load_settings


def _clean_env() -> dict[str, str]:
    keep = {"PATH", "HOME", "LANG", "PYTHONPATH"}
    return {k: v for k, v in os.environ.items() if k in keep}


def test_embedded_defaults_need_no_cloud_account(tmp_path: Path) -> None:
    s = Settings(_env_file=None, **{})  # type: ignore[call-arg]
    # The test environment overrides some values; check the declared defaults instead.
    fields = Settings.model_fields
    assert fields["database_url"].default.startswith("sqlite:///") and "/var/" in fields["database_url"].default
    assert fields["redis_url"].default == "redis://127.0.0.1:6379/0"
    assert fields["storage_backend"].default == "local"
    assert fields["storage_local_root"].default == ROOT / "var" / "storage"
    assert s.celery_broker_url == s.redis_url  # broker defaults to Redis


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"database_url": "not a url"}, "DATABASE_URL"),
        ({"database_url": "mysql://u@h/db"}, "DATABASE_URL"),
        ({"redis_url": "http://example"}, "REDIS_URL"),
        ({"broker_url": "kafka://x"}, "BROKER_URL"),
        ({"api_port": 70000}, "API_PORT"),
        ({"storage_backend": "ftp"}, "STORAGE_BACKEND"),
    ],
)
def test_invalid_value_names_the_variable(overrides: dict, variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(**overrides)
    assert variable in str(info.value.code)


def test_time_limits_must_fit_the_visibility_timeout() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(task_time_limit=8000, task_soft_time_limit=7000)
    assert "BROKER_VISIBILITY_TIMEOUT" in str(info.value.code)


def test_bad_setting_exits_non_zero_with_message() -> None:
    env = _clean_env() | {"DATABASE_URL": "postgres//broken"}
    proc = subprocess.run(
        [sys.executable, "-m", "app", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "DATABASE_URL" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_setting_stops_a_worker_at_start_up() -> None:
    env = _clean_env() | {"REDIS_URL": "ftp://nowhere"}
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "app", "worker", "-Q", "default"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "REDIS_URL" in proc.stderr


def test_configuration_doc_lists_every_setting() -> None:
    text = DOC_PATH.read_text()
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in text, f"{name.upper()} missing from docs/configuration.md"
    assert text == render(), "docs/configuration.md is stale: run `python -m app config-docs`"
