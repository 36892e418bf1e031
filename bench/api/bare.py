"""The baselines of ``bench.api``, served by the same gunicorn settings as the project's API.

``POST /durable`` is the honest limit of a submit: the same Flask, the same driver
(psycopg 3) on the same loopback PostgreSQL, writing the same two rows a submit must
make durable before it answers 202 (a job row in ``messages`` and its event in
``outbox_events``) in one transaction, one commit. It reads the JSON body, as a submit
does, and does nothing else: no authentication, no rate limit, no validation, no ORM, no
tracing, no metrics.

``POST /bare`` returns a constant: what Flask and gunicorn cost on their own.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import psycopg
from flask import Flask, request

application = Flask(__name__)

_conn: psycopg.Connection[Any] | None = None

_JOB = ("INSERT INTO messages (id, client_ref, conversation_id, channel, recipient, content, status, attempts, "
        "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, 'queued', 0, now(), now())")
_EVENT = ("INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, task_name, payload, created_at, "
          "attempts, next_attempt_at, dead) VALUES ('message', %s, 'message.submitted', 'app.tasks.messages.route', "
          "%s, now(), 0, now(), false)")


def _connection() -> psycopg.Connection[Any]:
    """One connection per gunicorn worker, opened after the fork (as the project's pool does)."""
    global _conn
    if _conn is None or _conn.closed:
        url = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        _conn = psycopg.connect(url)
    return _conn


@application.post("/bare")
def bare() -> tuple[dict[str, str], int]:
    """Accepts like a submit endpoint would (202 and a small JSON body), doing nothing."""
    return {"id": "0", "status": "pending", "status_url": "/bare/0"}, 202


@application.post("/durable")
def durable() -> tuple[dict[str, str], int]:
    """The job row and its outbox event in one transaction, committed before the 202."""
    body = request.get_json()
    ref = str(body.get("id") or uuid.uuid4().hex)
    job_id = uuid.uuid4().hex
    conn = _connection()
    with conn.transaction():
        conn.execute(_JOB, (job_id, ref, body.get("conversation_id", "bench"), body.get("channel", "whatsapp"),
                            body.get("recipient", "+15550001"), body.get("content", "")))
        conn.execute(_EVENT, (job_id, json.dumps({"message_id": job_id})))
    return {"id": ref, "status": "queued", "status_url": f"/durable/{ref}"}, 202
