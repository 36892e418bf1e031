"""Chunked files end to end on the local-directory backend: chunks through the API →
complete → outbox relay worker → merge worker (concatenation) → signed download link
served by the API. Same protocol and guarantees as on S3 (test_files_s3.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models.files import FileChunk
from app.services.files import chunk_prefix, object_key
from app.settings import get_settings
from app.storage import LocalStorage, get_storage
from tests.fixtures.services import wait_for
from tests.fixtures.workers import Worker

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def local_workers(pg_database: str, redis_client) -> Iterator[SimpleNamespace]:  # type: ignore[no-untyped-def]
    """A relay worker and a files worker on the local backend (the test environment's root)."""
    assert get_settings().storage_backend == "local"
    relay = Worker(["outbox"], name="files-local-relay", pool="threads", concurrency=2).start()
    merger = Worker(["files"], name="files-local", pool="prefork", concurrency=1).start()
    try:
        relay.wait_ready()
        merger.wait_ready()
        yield SimpleNamespace(relay=relay, merger=merger)
    finally:
        errors = []
        for worker in (relay, merger):
            try:
                if worker.stop() not in (0, None):
                    errors.append(worker.log_tail())
            except AssertionError as exc:
                errors.append(str(exc))
        assert not errors, "\n".join(errors)


def test_17_mib_in_4_chunks_merged_on_the_local_backend(api, local_workers) -> None:  # type: ignore[no-untyped-def]
    storage = get_storage(get_settings())
    assert isinstance(storage, LocalStorage)
    block = hashlib.sha256(b"local").digest() * 2048
    data = (block * (17 * MIB // len(block) + 1))[:17 * MIB]

    resp = api.post("/api/files", json={"filename": "../../etc/passwd", "size": len(data), "chunk_size": 5 * MIB,
                                        "content_type": "application/octet-stream"})
    assert resp.status_code == 201, resp.get_json()
    created = resp.get_json()
    file_id = created["id"]
    assert [c["size"] for c in created["chunks"]] == [5 * MIB, 5 * MIB, 5 * MIB, 2 * MIB]
    for chunk in reversed(created["chunks"]):  # order of arrival does not matter
        body = data[chunk["offset"]:chunk["offset"] + chunk["size"]]
        put = api.client.put(chunk["url"], data=body, headers=api.headers | {
            "Content-Type": "application/octet-stream", "X-Chunk-SHA256": hashlib.sha256(body).hexdigest()})
        assert put.status_code == 200, put.get_json()

    assert api.post(f"/api/files/{file_id}/complete").status_code == 202
    final = wait_for(lambda: (s := api.get(f"/api/files/{file_id}").get_json())["status"] in ("COMPLETED", "FAILED")
                     and s, timeout=60, message="merged")
    assert final["status"] == "COMPLETED", final
    assert final["sha256"] == hashlib.sha256(data).hexdigest() and final["final_size"] == len(data)
    assert final["merge_bytes_received"] is None  # no S3 on this backend

    # The signed link is served by the API itself; the download name is the sanitized one.
    link = urlsplit(final["download_url"])
    download = api.client.get(f"{link.path}")
    assert download.status_code == 200
    assert hashlib.sha256(download.data).hexdigest() == hashlib.sha256(data).hexdigest()
    assert download.headers["Content-Disposition"] == "attachment; filename=passwd"

    wait_for(lambda: storage.list(chunk_prefix(file_id)) == [], timeout=30, message="chunks deleted")
    assert storage.list(f"files/{file_id}/") == [object_key(file_id)]
    with session_scope() as session:
        assert session.scalars(select(FileChunk).where(FileChunk.file_id == file_id)).all() == []
