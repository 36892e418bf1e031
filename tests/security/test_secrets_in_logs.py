"""Secrets never reach the logs.

Every secret setting gets a distinctive value (SECRET_KEY, ADMIN_TOKEN, METRICS_TOKEN,
the S3 secret key, the SMTP and Flower passwords, the channel and telephony tokens, and
a password in DATABASE_URL, which PostgreSQL's trust authentication here ignores). A
full flow then runs through the API under gunicorn (DEBUG logs), real outbox and
messages workers and Flower: an API key and a worker token are created, a message is
routed to the channel server (one send failing first, so the error path logs too),
wrong credentials are tried, metrics and Flower are read. Every captured log file is
then searched for every secret, including the API key and worker token made on the way.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys

import requests

from tests.conftest import _TMP, PG_URL
from tests.fixtures.services import wait_for
from tests.security.conftest import ROOT, free_port, http_status, start_api, stop_api


def _secret(name: str) -> str:
    return f"{name}-{secrets.token_hex(10)}"


def test_no_secret_appears_in_any_log_of_a_full_run(pg_database, redis_client, start_worker,  # type: ignore[no-untyped-def]
                                                    channel_server) -> None:
    db_password = _secret("dbpw")
    values = {
        "SECRET_KEY": _secret("secret-key"),
        "ADMIN_TOKEN": _secret("admin-token"),
        "METRICS_TOKEN": _secret("metrics-token"),
        "S3_SECRET_ACCESS_KEY": _secret("s3-secret"),
        "SMTP_PASSWORD": _secret("smtp-pw"),
        "FLOWER_PASSWORD": _secret("flower-pw"),
        "WHATSAPP_TOKEN": _secret("wa-token"),
        "INSTAGRAM_TOKEN": _secret("ig-token"),
        "TELEPHONY_TOKEN": _secret("tel-token"),
    }
    database_url = PG_URL.replace("postgres@", f"postgres:{db_password}@", 1)
    assert db_password in database_url
    env = values | channel_server.env | {"DATABASE_URL": database_url, "SMTP_USERNAME": "mailer",
                                        "MESSAGE_RETRY_BACKOFF": "0.2", "MESSAGE_RETRY_BACKOFF_MAX": "1"}
    api_log = _TMP / f"secrets-api-{secrets.token_hex(3)}.log"
    flower_log = _TMP / f"secrets-flower-{secrets.token_hex(3)}.log"
    proc, base, _ = start_api(database_url, api_log, env | {"LOG_LEVEL": "DEBUG"}, workers=1)
    relay = start_worker(["outbox"], name="sec-relay", pool="threads", concurrency=2, extra_env=env)
    router = start_worker(["messages"], name="sec-router", pool="prefork", concurrency=1, extra_env=env)
    flower_port = free_port()
    with open(flower_log, "wb") as out:
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "app", "flower", "--address=127.0.0.1", f"--port={flower_port}",
             f"--basic-auth=ops:{values['FLOWER_PASSWORD']}", "--logging=debug"],
            cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    made: dict[str, str] = {}
    try:
        admin = {"Authorization": f"Bearer {values['ADMIN_TOKEN']}"}
        key = requests.post(f"{base}/api/admin/api-keys", json={"name": "logs"}, headers=admin, timeout=30)
        assert key.status_code == 201, key.text
        made["api key"] = key.json()["key"]
        worker = requests.post(f"{base}/api/admin/workers", json={"name": "logs"}, headers=admin, timeout=30)
        assert worker.status_code == 201, worker.text
        made["worker token"] = worker.json()["token"]
        client = {"Authorization": f"Bearer {made['api key']}"}

        relay.wait_ready()
        router.wait_ready()
        channel_server.configure(script=[503])  # the first send fails: the retry path logs too
        message_id = f"sec-{secrets.token_hex(4)}"
        sent = requests.post(f"{base}/api/messages", headers=client, timeout=30, json={
            "id": message_id, "conversation_id": "c1", "channel": "whatsapp", "recipient": "+15550001",
            "content": "hello"})
        assert sent.status_code == 202, sent.text

        def delivered() -> bool:
            body = requests.get(f"{base}/api/messages/{message_id}", headers=client, timeout=10).json()
            return body["status"] == "delivered"

        wait_for(delivered, timeout=60, interval=0.3, message="the message delivered")
        assert requests.post(f"{base}/api/v1/worker/heartbeat", json={"worker_id": "w1"}, timeout=10,
                             headers={"Authorization": f"Bearer {made['worker token']}"}).status_code == 200
        # Wrong credentials, in each place they are checked.
        assert requests.get(f"{base}/api/me", headers={"Authorization": "Bearer ak_wrong"}, timeout=10).status_code == 401
        assert requests.get(f"{base}/api/admin/api-keys", headers=client, timeout=10).status_code == 401
        assert requests.get(f"{base}/metrics", timeout=10).status_code == 401
        metrics = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {values['METRICS_TOKEN']}"},
                               timeout=30)
        assert metrics.status_code == 200
        assert requests.post(f"{base}/admin/login", data={"token": values["ADMIN_TOKEN"]}, timeout=10,
                             allow_redirects=False).status_code == 303
        # Flower, with and without its password.
        flower_base = f"http://127.0.0.1:{flower_port}"
        wait_for(lambda: http_status(flower_base + "/healthcheck") != 0, timeout=60, interval=0.3, message="Flower")
        good = "Basic " + base64.b64encode(f"ops:{values['FLOWER_PASSWORD']}".encode()).decode()
        assert http_status(flower_base + "/api/workers") == 401
        assert http_status(flower_base + "/api/workers", {"Authorization": good}) == 200
    finally:
        stop_api(proc)
        flower.terminate()
        try:
            flower.wait(timeout=15)
        except subprocess.TimeoutExpired:
            flower.kill()
        channel_server.configure(script=[])
    assert relay.stop() == 0 and router.stop() == 0

    logs: dict[str, str] = {path.name: path.read_text(errors="replace")
                            for path in (api_log, flower_log, relay.log_path, router.log_path)}
    # The logs really are the run's: the message went through both workers and the API.
    assert message_id in logs[relay.log_path.name] or message_id in logs[router.log_path.name]
    assert "/api/messages" in logs[api_log.name]
    leaks = [f"{name} in {log_name}" for name, secret in (values | made | {"DATABASE_URL password": db_password}).items()
             for log_name, text in logs.items() if secret in text]
    assert not leaks, f"secrets written to logs: {leaks}"
