"""Direct uploads on the S3 backend (moto's real S3 server on loopback): the API hands out a
presigned PUT URL, the client uploads to object storage itself, ``complete`` checks what
arrived, and a real OCR worker on the S3 backend reads it from the bucket."""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from app.db import session_scope
from app.models.ocr import Upload
from app.storage import get_storage
from tests.conftest import need
from tests.fixtures.services import wait_for
from tests.ocr_fixtures import FIXTURES, build, missing_fonts, score, truth


def _s3_env(settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "STORAGE_BACKEND": "s3", "S3_ENDPOINT_URL": settings.s3_endpoint_url, "S3_BUCKET": settings.s3_bucket,
        "S3_REGION": settings.s3_region, "S3_ACCESS_KEY_ID": settings.s3_access_key_id,
        "S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),
    }


@pytest.fixture
def s3_api(api, s3_settings) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """The API with its storage on moto (the database stays the test PostgreSQL)."""
    app = api.client.application
    original = app.config["SETTINGS"]
    app.config["SETTINGS"] = original.model_copy(update={k: getattr(s3_settings, k) for k in (
        "storage_backend", "s3_endpoint_url", "s3_bucket", "s3_region", "s3_access_key_id", "s3_secret_access_key")})
    yield api
    app.config["SETTINGS"] = original


def _put(url: str, data: bytes) -> int:
    assert url.startswith("http://127.0.0.1:")  # loopback only
    # urllib would label the body a form (x-www-form-urlencoded) without a Content-Type.
    request = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.status


def _start(s3_api, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    resp = s3_api.post("/api/uploads", json={"filename": name})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def test_direct_upload_through_a_presigned_put_is_ocrd_from_the_bucket(
    s3_api, s3_settings, start_worker, tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    need(shutil.which("tesseract") is not None, "tesseract (Debian tesseract-ocr)")
    need(not missing_fonts(["clean-dejavu-sans"]), "DejaVu fonts (Debian fonts-dejavu-core)")
    env = _s3_env(s3_settings) | {"OCR_TMP_DIR": str(tmp_path / "ocr-tmp")}
    relay = start_worker(["outbox"], name="ocr-s3-relay", pool="threads", concurrency=2, extra_env=env)
    worker = start_worker(["ocr"], name="ocr-s3", pool="prefork", concurrency=1, extra_env=env)
    image = build(FIXTURES["clean-dejavu-sans"], tmp_path).read_bytes()

    body = _start(s3_api, "phone photo.png")
    assert body["status"] == "uploaded" and body["upload_method"] == "PUT" and body["size"] is None
    assert body["expires_in"] == s3_settings.presign_expiry_seconds
    # Completing before anything was uploaded is refused, and changes nothing.
    early = s3_api.post(body["complete_url"])
    assert early.status_code == 409 and early.get_json()["error"]["code"] == "upload_missing"

    assert _put(body["upload_url"], image) == 200
    relay.wait_ready()
    worker.wait_ready()
    done = s3_api.post(body["complete_url"])
    assert done.status_code == 202 and done.get_json()["status"] == "queued"

    def finished() -> str | None:
        with session_scope() as session:
            row = session.get(Upload, body["id"])
            return row.status if row is not None and row.status in ("ready", "failed") else None

    assert wait_for(finished, timeout=90, message="direct upload finished") == "ready"
    status = s3_api.get(body["status_url"]).get_json()
    assert status["content_type"] == "image/png" and status["size"] == len(image)
    assert score(status["parsed_preview"], truth(FIXTURES["clean-dejavu-sans"])).accuracy >= 0.98
    assert get_storage(s3_settings).exists(f"ocr/uploads/{body['id']}/original")
    assert list((tmp_path / "ocr-tmp").iterdir()) == []


def test_direct_upload_of_a_bad_file_fails_at_complete(s3_api, s3_settings) -> None:  # type: ignore[no-untyped-def]
    body = _start(s3_api, "card.png")
    assert _put(body["upload_url"], b"Only words here, where a scorecard should be.\n") == 200
    resp = s3_api.post(body["complete_url"])
    assert resp.status_code == 409
    error = resp.get_json()["error"]
    assert error["code"] == "upload_failed" and "unsupported file type text/plain" in error["message"]
    status = s3_api.get(body["status_url"]).get_json()
    assert status["status"] == "failed" and status["content_type"] == "text/plain"
