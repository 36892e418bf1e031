"""Uploads API against the real PostgreSQL test database and local storage (no worker):
upload, early refusals, complete through the outbox, status, the feature flag."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models.ocr import Upload
from app.models.outbox import OutboxEvent
from app.services.outbox import task_kwargs
from app.settings import get_settings
from app.storage import get_storage

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # libmagic needs only the signature


def _post_file(api, data: bytes, name: str = "card.png"):  # type: ignore[no-untyped-def]
    return api.post("/api/uploads", data={"file": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def _count(model, **where) -> int:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        stmt = select(func.count()).select_from(model)
        for key, value in where.items():
            stmt = stmt.where(getattr(model, key) == value)
        return int(session.scalar(stmt) or 0)


@pytest.fixture
def png_bytes(tmp_path) -> bytes:  # type: ignore[no-untyped-def]
    from PIL import Image

    Image.new("L", (40, 20), 255).save(tmp_path / "x.png")
    return (tmp_path / "x.png").read_bytes()


def test_multipart_upload_is_stored_with_type_from_bytes_and_a_safe_name(api, png_bytes) -> None:  # type: ignore[no-untyped-def]
    resp = _post_file(api, png_bytes, name="../../etc/Scorecard\x07 final.JPG")
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["status"] == "uploaded"
    assert body["content_type"] == "image/png"  # the bytes, not the .JPG name
    assert body["filename"] == "Scorecard final.JPG"
    assert body["size"] == len(png_bytes)
    assert body["status_url"] == f"/api/uploads/{body['id']}/status"
    assert body["complete_url"] == f"/api/uploads/{body['id']}/complete"
    with session_scope() as session:
        upload = session.get(Upload, body["id"])
        assert upload is not None and upload.status == "uploaded"
        key = upload.storage_key
    with get_storage(get_settings()).open(key) as f:
        assert f.read() == png_bytes


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the file is empty (0 bytes)"),
        (b"This is a plain text note and not a picture.\n" * 3, "unsupported file type text/plain"),
        (b"GIF89a" + b"\x00" * 40, "unsupported file type image/gif"),
    ],
)
def test_empty_or_wrong_type_is_recorded_failed_and_not_stored(api, data: bytes, reason: str) -> None:  # type: ignore[no-untyped-def]
    resp = _post_file(api, data, name="card.png")
    assert resp.status_code == 201
    body = resp.get_json()
    assert body["status"] == "failed"
    assert body["error"].startswith(reason)
    with session_scope() as session:
        key = session.get(Upload, body["id"]).storage_key  # type: ignore[union-attr]
    assert not get_storage(get_settings()).exists(key)
    status = api.get(body["status_url"]).get_json()
    assert status["status"] == "failed" and status["error"].startswith(reason)
    # Completing a failed upload is refused, and queues nothing.
    again = api.post(body["complete_url"])
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "upload_failed"
    assert _count(OutboxEvent, aggregate_id=body["id"]) == 0


@pytest.mark.parametrize("extra", [1, 2 * 1024 * 1024])
def test_file_over_the_limit_is_refused_with_413_json(api, extra: int) -> None:  # type: ignore[no-untyped-def]
    limit = get_settings().ocr_max_file_bytes
    before = _count(Upload)
    resp = _post_file(api, PNG + b"\x00" * (limit - len(PNG) + extra))
    assert resp.status_code == 413
    error = resp.get_json()["error"]
    assert error["code"] == "file_too_large"
    assert f"{limit:,}" in error["message"]
    assert _count(Upload) == before


def test_missing_file_field_is_a_validation_error(api) -> None:  # type: ignore[no-untyped-def]
    resp = api.post("/api/uploads", data={"other": "x"}, content_type="multipart/form-data")
    assert resp.status_code == 400
    assert resp.get_json()["error"]["details"][0]["loc"] == ["file"]


def test_direct_upload_needs_the_s3_backend(api) -> None:  # type: ignore[no-untyped-def]
    resp = api.post("/api/uploads", json={"filename": "card.png"})
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "direct_upload_unavailable"


def test_complete_queues_once_through_the_outbox(api, png_bytes) -> None:  # type: ignore[no-untyped-def]
    upload_id = _post_file(api, png_bytes).get_json()["id"]
    first = api.post(f"/api/uploads/{upload_id}/complete")
    assert first.status_code == 202
    assert first.get_json() == {"id": upload_id, "status": "queued", "duplicate": False,
                                "status_url": f"/api/uploads/{upload_id}/status"}
    second = api.post(f"/api/uploads/{upload_id}/complete")
    assert second.status_code == 202 and second.get_json()["duplicate"] is True
    with session_scope() as session:
        events = list(session.scalars(select(OutboxEvent).where(OutboxEvent.aggregate_id == upload_id)))
        assert [(e.task_name, task_kwargs(e)) for e in events] == [("app.tasks.ocr.process", {"upload_id": upload_id})]
        upload = session.get(Upload, upload_id)
        assert upload is not None and upload.status == "queued" and upload.queued_at is not None
    status = api.get(f"/api/uploads/{upload_id}/status").get_json()
    assert status["status"] == "queued"
    assert status["progress"] == {"pages_done": 0, "pages_total": None, "percent": None}
    assert status["parsed_preview"] is None and status["error"] is None


def test_unknown_upload_is_404(api) -> None:  # type: ignore[no-untyped-def]
    assert api.get("/api/uploads/" + "0" * 32 + "/status").status_code == 404
    resp = api.post("/api/uploads/" + "0" * 32 + "/complete")
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"


def test_routes_need_an_api_key(api, png_bytes) -> None:  # type: ignore[no-untyped-def]
    resp = api.client.post("/api/uploads", data={"file": (io.BytesIO(png_bytes), "a.png")},
                           content_type="multipart/form-data")
    assert resp.status_code == 401
    assert api.client.get("/api/uploads/" + "0" * 32 + "/status").status_code == 401


@pytest.fixture
def ocr_disabled(api) -> Iterator[None]:  # type: ignore[no-untyped-def]
    app = api.client.application
    original = app.config["SETTINGS"]
    app.config["SETTINGS"] = original.model_copy(update={"enable_ocr": False})
    yield
    app.config["SETTINGS"] = original


def test_feature_flag_turns_every_route_off_with_503(api, ocr_disabled, png_bytes) -> None:  # type: ignore[no-untyped-def]
    before = _count(Upload)
    responses = [
        _post_file(api, png_bytes),
        api.post("/api/uploads", json={"filename": "a.png"}),
        api.post("/api/uploads/" + "0" * 32 + "/complete"),
        api.get("/api/uploads/" + "0" * 32 + "/status"),
    ]
    for resp in responses:
        assert resp.status_code == 503
        assert resp.get_json()["error"]["code"] == "ocr_disabled"
    assert _count(Upload) == before


def test_routes_are_in_the_openapi_document(api) -> None:  # type: ignore[no-untyped-def]
    paths = api.client.get("/openapi.json").get_json()["paths"]
    assert {"/api/uploads", "/api/uploads/{upload_id}/complete", "/api/uploads/{upload_id}/status"} <= set(paths)
    body = paths["/api/uploads"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "application/json" in body
