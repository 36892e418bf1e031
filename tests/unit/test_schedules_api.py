"""Schedules API: bad input answers 400 with a JSON error naming the problem."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"name": "x", "plan": "paid", "timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"name": "x", "plan": "paid", "business_hours": {"fri": [["18:00", "09:00"]]}}, "not after start"),
        ({"name": "x", "plan": "trial"}, "trial_ends_at"),
        ({"name": "x", "plan": "trial", "trial_ends_at": "2030-01-01T00:00:00"}, "UTC offset"),
    ],
)
def test_bad_tenant(api, body: dict, needle: str) -> None:  # type: ignore[no-untyped-def]
    res = api.post("/api/tenants", json=body)
    assert res.status_code == 400, res.get_json()
    error = res.get_json()["error"]
    assert needle in error["message"] or needle in str(error["details"])


def test_bad_lead_campaign_and_call(api) -> None:  # type: ignore[no-untyped-def]
    tenant = api.post("/api/tenants", json={"name": "t", "plan": "paid"}).get_json()["id"]
    res = api.post("/api/leads", json={"tenant_id": tenant, "name": "l", "email": "not an email"})
    assert res.status_code == 400 and "invalid email address" in res.get_json()["error"]["message"]
    res = api.post("/api/campaigns", json={"tenant_id": tenant, "channel": "email", "template": "t", "recipients": []})
    assert res.status_code == 400 and "at least one recipient" in res.get_json()["error"]["message"]
    res = api.post("/api/campaigns", json={"tenant_id": "0" * 32, "channel": "email", "template": "t",
                                           "recipients": ["a@example.com"]})
    assert res.status_code == 400 and "does not exist" in res.get_json()["error"]["message"]
    lead = api.post("/api/leads", json={"tenant_id": tenant, "name": "no phone"}).get_json()["id"]
    res = api.post("/api/calls", json={"tenant_id": tenant, "lead_id": lead})
    assert res.status_code == 400 and "no phone number" in res.get_json()["error"]["message"]
    assert api.get("/api/campaigns/999999999").status_code == 404
    # Ids are opaque: nothing sequential to walk.
    other = api.post("/api/tenants", json={"name": "t2", "plan": "paid"}).get_json()["id"]
    assert len(tenant) == len(other) == 32 and not tenant.isdigit() and int(other, 16) != int(tenant, 16) + 1


def test_created_rows_read_back(api) -> None:  # type: ignore[no-untyped-def]
    hours = {"mon": [["09:00", "12:00"], ["13:00", "24:00"]]}
    res = api.post("/api/tenants", json={"name": "t", "plan": "trial", "trial_ends_at": "2030-01-01T00:00:00Z",
                                         "timezone": "Asia/Kolkata", "business_hours": hours})
    assert res.status_code == 201
    tenant = api.get(f"/api/tenants/{res.get_json()['id']}").get_json()
    assert tenant["business_hours"] == hours and tenant["status"] == "active" and tenant["timezone"] == "Asia/Kolkata"
    lead = api.post("/api/leads", json={"tenant_id": tenant["id"], "name": "l", "email": "L@Example.COM",
                                        "phone": "+91 98765 43210",
                                        "next_reminder_at": "2030-01-01T09:00:00+05:30"}).get_json()
    got = api.get(f"/api/leads/{lead['id']}").get_json()
    assert got["email"] == "L@example.com" and got["phone"] == "+919876543210"
    assert got["next_reminder_at"].startswith("2030-01-01T03:30:00")
