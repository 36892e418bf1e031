"""Two client services against the running API over HTTP, with keys made by the CLI.

``python -m app create-api-key`` makes two clients (and a second key of the first, as a
rotation would); each submits work of every family through gunicorn; neither reaches the
other's, a rotated key keeps its client's, and the admin credential sees both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import requests

from tests.security.conftest import ROOT, Served


def _cli_key(served: Served, *args: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-m", "app", "create-api-key", *args], cwd=ROOT, env=served.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout.strip().splitlines()[-1])
    return body["key"], body["client_id"]


def test_two_clients_never_reach_each_others_work(served_api: Served) -> None:
    name = f"svc-{uuid.uuid4().hex[:6]}"
    key_a, client_a = _cli_key(served_api, f"{name}-a")
    key_b, client_b = _cli_key(served_api, f"{name}-b")
    key_a2, client_a2 = _cli_key(served_api, "rotated", "--client", f"{name}-a")
    assert client_a != client_b and client_a2 == client_a
    # A second client of an existing name is refused with the way to add a key instead.
    again = subprocess.run([sys.executable, "-m", "app", "create-api-key", f"{name}-a"], cwd=ROOT,
                           env=served_api.env, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "--client" in again.stderr

    http = requests.Session()

    def call(method: str, path: str, key: str, **kwargs):  # type: ignore[no-untyped-def]
        return http.request(method, served_api.url(path), headers={"Authorization": f"Bearer {key}"},
                            timeout=30, **kwargs)

    def made(resp, status: int) -> dict:  # type: ignore[no-untyped-def,type-arg]
        assert resp.status_code == status, (resp.status_code, resp.text)
        return resp.json()

    # A's work, one object of every family.
    scan = made(call("POST", "/api/scans", key_a, json={"url": "https://example.com/?token=s3cret"}), 202)["id"]
    upload = made(call("POST", "/api/uploads", key_a,
                       files={"file": ("card.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)}), 201)["id"]
    voice = made(call("POST", "/api/voice", key_a, files={"audio": ("call.wav", b"RIFF-a-clip")},
                      data={"target": "remote"}), 202)["id"]
    ref = f"order-{uuid.uuid4().hex[:6]}"
    message = {"id": ref, "conversation_id": "c", "channel": "whatsapp", "recipient": "+15550001", "content": "A's"}
    made(call("POST", "/api/messages", key_a, json=message), 202)
    file = made(call("POST", "/api/files", key_a, json={"filename": "a.bin", "size": 4}), 201)["id"]
    tenant = made(call("POST", "/api/tenants", key_a, json={"name": "A Ltd", "plan": "paid"}), 201)["id"]
    lead = made(call("POST", "/api/leads", key_a, json={"tenant_id": tenant, "name": "Ann", "email": "ann@a.example",
                                                         "phone": "+15551234567"}), 201)["id"]
    campaign = made(call("POST", "/api/campaigns", key_a, json={
        "tenant_id": tenant, "channel": "email", "template": "hi", "recipients": ["x@a.example"],
        "scheduled_at": "2099-01-01T00:00:00Z"}), 201)["id"]
    phone_call = made(call("POST", "/api/calls", key_a, json={"tenant_id": tenant, "lead_id": lead,
                                                              "scheduled_for": "2099-01-01T00:00:00Z"}), 201)["id"]

    reads = [f"/api/scans/{scan}", f"/api/uploads/{upload}/status", f"/api/voice/{voice}", f"/api/messages/{ref}",
             f"/api/files/{file}", f"/api/tenants/{tenant}", f"/api/leads/{lead}", f"/api/campaigns/{campaign}",
             f"/api/calls/{phone_call}"]
    for path in reads:
        assert call("GET", path, key_b).status_code == 404, path
        assert call("GET", path, key_a).status_code == 200, path
        assert call("GET", path, key_a2).status_code == 200, path  # the rotated key keeps the client's work
        assert call("GET", path, served_api.admin_token).status_code == 200, path

    # Lists: B sees none of A's; the admin sees both and filters by client.
    scan_b = made(call("POST", "/api/scans", key_b, json={"url": "https://example.org/"}), 202)["id"]
    listed_b = {s["id"] for s in made(call("GET", "/api/scans?per_page=500", key_b), 200)["items"]}
    assert scan not in listed_b and scan_b in listed_b
    listed_a = {s["id"] for s in made(call("GET", "/api/scans?per_page=500", key_a), 200)["items"]}
    assert scan in listed_a and scan_b not in listed_a
    everyone = {s["id"] for s in made(call("GET", "/api/scans?per_page=500", served_api.admin_token), 200)["items"]}
    assert {scan, scan_b} <= everyone
    only_a = {s["id"] for s in made(call("GET", f"/api/scans?per_page=500&client_id={client_a}",
                                         served_api.admin_token), 200)["items"]}
    assert scan in only_a and scan_b not in only_a

    # Actions: B can neither complete A's upload or file, nor send a chunk of it, nor build on
    # A's tenant, lead or stored clip.
    assert call("POST", f"/api/uploads/{upload}/complete", key_b).status_code == 404
    assert call("POST", f"/api/files/{file}/complete", key_b).status_code == 404
    assert call("PUT", f"/api/files/{file}/chunks/0", key_b, data=b"evil").status_code == 404
    assert call("POST", "/api/campaigns", key_b, json={"tenant_id": tenant, "channel": "email", "template": "spam",
                                                       "recipients": ["victim@b.example"]}).status_code == 400
    assert call("POST", "/api/calls", key_b, json={"tenant_id": tenant, "lead_id": lead}).status_code == 400
    assert call("POST", "/api/voice", key_b, json={"storage_key": f"voice/{voice}/audio"}).status_code == 400
    assert call("POST", f"/api/uploads/{upload}/complete", key_a).status_code in (202, 409)

    # B reusing A's message id gets its own message; A's stays A's.
    mine = made(call("POST", "/api/messages", key_b, json=message | {"content": "B's", "recipient": "+15550002"}), 202)
    assert mine["duplicate"] is False
    assert made(call("GET", f"/api/messages/{ref}", key_b), 200)["content"] == "B's"
    assert made(call("GET", f"/api/messages/{ref}", key_a), 200)["content"] == "A's"
