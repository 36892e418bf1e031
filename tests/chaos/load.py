"""The mixed load of the chaos suite, submitted over real HTTP to the API.

Each item carries a client reference (``ref``). A submission counts as accepted only
when the API answered 2xx with an id. Requests are retried on 5xx, timeouts and
connection errors; the retry uses each family's idempotency where there is one:

- messages: the client-chosen message id (the same message again adds nothing);
- OCR uploads and files: the upload is created first and only ``complete`` (idempotent)
  queues it; an upload whose creation answer was lost is left ``uploaded``/``UPLOADING``,
  never queued, and is counted as an orphan;
- scans and voice have no idempotency key: the ref travels in the scan URL's query and in
  the voice task's metadata, so a retried request that had in fact committed shows up as
  a second job with the same ref and is counted (``double_accepted``), not hidden.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

RETRY_STATUS = (500, 502, 503, 504)


@dataclass
class Item:
    family: str
    ref: str
    spec: dict[str, Any]
    id: str | None = None
    accepted: bool = False
    attempts: int = 0
    error: str | None = None
    orphans: list[str] = field(default_factory=list)


class GaveUp(Exception):
    """The API kept failing past the item's deadline."""


class Client:
    """HTTP calls with retries on transient failures, up to a per-call deadline."""

    def __init__(self, base_url: str, token: str, deadline: float = 150.0) -> None:
        self.base = base_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.deadline = deadline
        self.local = threading.local()
        self.transient_errors = 0

    def _session(self) -> requests.Session:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        return session

    def call(self, method: str, path: str, ok: tuple[int, ...], item: Item, **kwargs: Any) -> requests.Response:
        end = time.monotonic() + self.deadline
        headers = self.headers | kwargs.pop("headers", {})
        wait = 0.3
        last = ""
        while True:
            item.attempts += 1
            try:
                resp = self._session().request(method, self.base + path, headers=headers, timeout=90, **kwargs)
                if resp.status_code in ok:
                    return resp
                if resp.status_code not in RETRY_STATUS:
                    raise AssertionError(f"{method} {path} answered {resp.status_code}: {resp.text[:300]}")
                last = f"HTTP {resp.status_code}"
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = type(exc).__name__
                self.local.session = None  # a fresh connection after a broken one
            self.transient_errors += 1
            if time.monotonic() > end:
                raise GaveUp(f"{method} {path}: still failing after {self.deadline:g} s ({last})")
            time.sleep(wait + random.uniform(0, wait))
            wait = min(wait * 2, 4.0)


# --- the mix ---------------------------------------------------------------------------------------
def build_mix(counts: dict[str, int], *, run: str, site_base: str, ocr_image: bytes, clips: list[bytes],
              seed: int) -> list[Item]:
    """Items of every family, shuffled so that each family is spread over the whole run."""
    rng = random.Random(seed)
    items: list[Item] = []
    for n in range(counts["messages"]):
        channel = "all" if n % 5 == 0 else ("whatsapp" if n % 2 else "instagram")
        items.append(Item("messages", f"{run}-m{n}", {"channel": channel, "content": f"chaos message {n}"}))
    for n in range(counts["voice"]):
        spec: dict[str, Any] = {"transcript": f"Hello, this is call number {n}. Please call back about your order."}
        if n < len(clips):
            spec = {"audio": clips[n]}
        items.append(Item("voice", f"{run}-v{n}", spec))
    for n in range(counts["ocr"]):
        items.append(Item("ocr", f"{run}-o{n}", {"bytes": ocr_image}))
    for n in range(counts["scans"]):
        path = "/login" if n % 3 == 0 else "/plain"
        items.append(Item("scans", f"{run}-s{n}", {"url": f"{site_base}{path}?ref={run}-s{n}"}))
    for n in range(counts["files"]):
        size = 5 * 1024 * 1024 + 70_000 if n % 4 == 0 else rng.randint(10_000, 300_000)
        data = rng.randbytes(size)
        items.append(Item("files", f"{run}-f{n}", {"data": data, "sha256": hashlib.sha256(data).hexdigest()}))
    rng.shuffle(items)
    return items


def submit(client: Client, item: Item) -> None:
    """Submit one item; sets ``item.id`` and ``item.accepted`` on a 2xx with an id."""
    try:
        SUBMITTERS[item.family](client, item)
    except GaveUp as exc:
        item.error = str(exc)


def _message(client: Client, item: Item) -> None:
    body = {"id": item.ref, "conversation_id": f"conv-{item.ref}", "channel": item.spec["channel"],
            "recipient": "+15550001", "content": item.spec["content"]}
    resp = client.call("POST", "/api/messages", (202,), item, json=body)
    item.id = resp.json()["id"]
    item.accepted = True


def _voice(client: Client, item: Item) -> None:
    meta = {"chaos_ref": item.ref}
    if "audio" in item.spec:
        resp = client.call("POST", "/api/voice", (202,), item,
                           files={"audio": ("call.wav", item.spec["audio"], "audio/wav")},
                           data={"metadata": json.dumps(meta)})
    else:
        resp = client.call("POST", "/api/voice", (202,), item,
                           json={"transcript": item.spec["transcript"], "metadata": meta})
    item.id = resp.json()["id"]
    item.accepted = True


def _ocr(client: Client, item: Item) -> None:
    resp = client.call("POST", "/api/uploads", (201,), item,
                       files={"file": (f"{item.ref}.png", item.spec["bytes"], "image/png")})
    body = resp.json()
    assert body["status"] == "uploaded", body
    item.id = body["id"]
    client.call("POST", f"/api/uploads/{item.id}/complete", (202,), item)
    item.accepted = True


def _scan(client: Client, item: Item) -> None:
    resp = client.call("POST", "/api/scans", (202,), item, json={"url": item.spec["url"]})
    item.id = resp.json()["id"]
    item.accepted = True


def _file(client: Client, item: Item) -> None:
    data: bytes = item.spec["data"]
    resp = client.call("POST", "/api/files", (201,), item,
                       json={"filename": f"{item.ref}.bin", "size": len(data), "content_type": "application/octet-stream"})
    body = resp.json()
    item.id = body["id"]
    for chunk in body["chunks"]:
        part = data[chunk["offset"]:chunk["offset"] + chunk["size"]]
        client.call("PUT", chunk["api_path"], (200,), item, data=part,
                    headers={"X-Chunk-SHA256": hashlib.sha256(part).hexdigest(),
                             "Content-Type": "application/octet-stream"})
    client.call("POST", f"/api/files/{item.id}/complete", (202,), item)
    item.accepted = True


SUBMITTERS = {"messages": _message, "voice": _voice, "ocr": _ocr, "scans": _scan, "files": _file}
