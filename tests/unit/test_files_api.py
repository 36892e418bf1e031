"""The chunked-upload API (Flask test client, real PostgreSQL, local storage): validation,
chunk handling, completion through the outbox. Merging is tested in test_files_service.py
and end to end in tests/integration/test_files_*.py."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from app.db import session_scope
from app.models.files import File, FileChunk
from app.models.outbox import OutboxEvent
from app.services.auth import create_api_key
from app.services.files import chunk_key
from app.services.outbox import task_kwargs
from app.settings import get_settings
from app.storage import get_storage

MIB = 1024 * 1024


def _create(api, **body):  # type: ignore[no-untyped-def]
    return api.post("/api/files", json={"filename": "data.bin", "size": 6 * MIB, "chunk_size": 5 * MIB} | body)


def _put(api, file_id: str, index: int, data: bytes, **headers):  # type: ignore[no-untyped-def]
    return api.client.put(f"/api/files/{file_id}/chunks/{index}", data=data,
                          headers=api.headers | {"Content-Type": "application/octet-stream"} | headers)


def _events(file_id: str) -> list[OutboxEvent]:
    with session_scope() as session:
        stmt = (select(OutboxEvent).where(OutboxEvent.aggregate_type == "file", OutboxEvent.aggregate_id == file_id)
                .order_by(OutboxEvent.id))  # in the order written: a heap scan's order is not
        return list(session.scalars(stmt))


def test_create_plans_chunks_and_sanitizes_the_filename(api) -> None:  # type: ignore[no-untyped-def]
    resp = api.post("/api/files", json={"filename": "../../etc/passwd", "size": 17 * MIB, "chunk_size": 5 * MIB})
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["filename"] == "passwd" and body["status"] == "UPLOADING"
    assert (body["chunk_size"], body["total_chunks"]) == (5 * MIB, 4)
    assert [c["size"] for c in body["chunks"]] == [5 * MIB, 5 * MIB, 5 * MIB, 2 * MIB]
    assert [c["offset"] for c in body["chunks"]] == [0, 5 * MIB, 10 * MIB, 15 * MIB]
    # Local backend: chunks go through the API.
    assert body["chunks"][3]["url"] == body["chunks"][3]["api_path"] == f"/api/files/{body['id']}/chunks/3"
    with session_scope() as session:
        assert session.get(File, body["id"]).filename == "passwd"
    status = api.get(body["status_url"]).get_json()
    assert status["chunks_received"] == 0 and status["missing_chunks"] == [0, 1, 2, 3]
    assert status["download_url"] is None


def test_create_rejects_bad_input(api) -> None:  # type: ignore[no-untyped-def]
    too_big = _create(api, size=get_settings().files_max_size + 1)
    assert too_big.status_code == 413 and too_big.get_json()["error"]["code"] == "file_too_large"
    small_chunks = _create(api, chunk_size=1 * MIB)
    assert small_chunks.status_code == 400 and small_chunks.get_json()["error"]["code"] == "invalid_chunk_size"
    for body, field in (({"size": 0}, "size"), ({"filename": ""}, "filename"), ({"size": "big"}, "size")):
        resp = _create(api, **body)
        assert resp.status_code == 400 and field in resp.get_json()["error"]["message"]
    bad_type = _create(api, content_type="not a type")
    assert bad_type.status_code == 400 and "content_type" in bad_type.get_json()["error"]["message"]
    assert api.post("/api/files", json={"filename": "x", "size": 1}, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_chunk_size_index_and_checksum_are_checked(api) -> None:  # type: ignore[no-untyped-def]
    file_id = _create(api).get_json()["id"]
    wrong = _put(api, file_id, 1, b"x" * 10)
    assert wrong.status_code == 400
    err = wrong.get_json()["error"]
    assert err["code"] == "wrong_chunk_size" and err["details"] == {"index": 1, "expected": MIB, "received": 10}
    for index in (2, -1):
        out = _put(api, file_id, index, b"x" * MIB)
        assert out.status_code == 400 and out.get_json()["error"]["code"] == "chunk_index_out_of_range"
    bad_sum = _put(api, file_id, 1, b"x" * MIB, **{"X-Chunk-SHA256": hashlib.sha256(b"other").hexdigest()})
    assert bad_sum.status_code == 400 and bad_sum.get_json()["error"]["code"] == "checksum_mismatch"
    assert api.get(f"/api/files/{file_id}").get_json()["chunks_received"] == 0
    assert not get_storage(get_settings()).exists(chunk_key(file_id, 1))
    assert _put(api, "f" * 32, 0, b"x").status_code == 404


def test_reupload_replaces_a_chunk(api) -> None:  # type: ignore[no-untyped-def]
    file_id = _create(api).get_json()["id"]
    first = _put(api, file_id, 1, b"a" * MIB, **{"X-Chunk-SHA256": hashlib.sha256(b"a" * MIB).hexdigest()})
    assert first.status_code == 200, first.get_json()
    second = _put(api, file_id, 1, b"b" * MIB)
    assert second.status_code == 200 and second.get_json()["chunks_received"] == 1
    assert second.get_json()["md5"] == hashlib.md5(b"b" * MIB).hexdigest()
    with session_scope() as session:
        rows = list(session.scalars(select(FileChunk).where(FileChunk.file_id == file_id)))
    assert [(r.index, r.sha256) for r in rows] == [(1, hashlib.sha256(b"b" * MIB).hexdigest())]
    with get_storage(get_settings()).open(chunk_key(file_id, 1)) as f:
        assert f.read() == b"b" * MIB


def test_complete_names_missing_chunks_then_enqueues_once(api) -> None:  # type: ignore[no-untyped-def]
    file_id = api.post("/api/files", json={"filename": "f", "size": 16 * MIB, "chunk_size": 5 * MIB}).get_json()["id"]
    for index, size in ((0, 5 * MIB), (1, 5 * MIB), (3, MIB)):
        assert _put(api, file_id, index, b"c" * size).status_code == 200
    missing = api.post(f"/api/files/{file_id}/complete")
    assert missing.status_code == 409
    err = missing.get_json()["error"]
    assert err["code"] == "chunks_missing" and err["details"]["missing"] == [2]
    assert "missing chunks: 2" in err["message"]
    assert _events(file_id) == [] and api.get(f"/api/files/{file_id}").get_json()["status"] == "UPLOADING"

    assert _put(api, file_id, 2, b"c" * (5 * MIB)).status_code == 200
    done = api.post(f"/api/files/{file_id}/complete")
    assert done.status_code == 202, done.get_json()
    assert done.get_json() | {"status_url": None} == {"id": file_id, "status": "MERGING", "enqueued": True,
                                                      "status_url": None}
    events = _events(file_id)
    assert [(e.task_name, task_kwargs(e)) for e in events] == [("app.tasks.files.merge", {"file_id": file_id})]
    again = api.post(f"/api/files/{file_id}/complete")
    assert again.status_code == 202 and again.get_json()["enqueued"] is False
    assert len(_events(file_id)) == 1
    late = _put(api, file_id, 0, b"d" * (5 * MIB))
    assert late.status_code == 409 and late.get_json()["error"]["code"] == "wrong_state"


def test_a_file_is_visible_only_to_its_key(api) -> None:  # type: ignore[no-untyped-def]
    file_id = _create(api).get_json()["id"]
    with session_scope() as session:
        _, other = create_api_key(session, "someone else")
    headers = {"Authorization": f"Bearer {other}"}
    assert api.client.get(f"/api/files/{file_id}", headers=headers).status_code == 404
    assert api.client.post(f"/api/files/{file_id}/complete", headers=headers).status_code == 404
    assert api.client.put(f"/api/files/{file_id}/chunks/1", data=b"x" * MIB, headers=headers).status_code == 404
    assert api.get(f"/api/files/{file_id}").status_code == 200


def test_routes_are_in_openapi(api) -> None:  # type: ignore[no-untyped-def]
    paths = api.client.get("/openapi.json").get_json()["paths"]
    for path in ("/api/files", "/api/files/{file_id}", "/api/files/{file_id}/complete",
                 "/api/files/{file_id}/chunks/{index}"):
        assert path in paths, sorted(paths)
