"""Chunked files end to end on S3 (moto's server over real HTTP): API → presigned PUTs →
complete → outbox relay worker → merge worker (UploadPartCopy) → presigned download, plus
a worker SIGKILLed mid-merge and the garbage collector on its worker.

The workers reach moto through a small loopback proxy in this module that can hold back
UploadPartCopy requests, so a merge can be caught (and killed) midway without any test
hook in the application.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from app.db import session_scope
from app.models.files import FAILED, UPLOADING, File, FileChunk
from app.models.jobs import JobRun
from app.services.files import chunk_key, chunk_prefix, object_key
from app.storage import S3Storage, get_storage
from tests.fixtures.services import wait_for
from tests.fixtures.workers import Worker

MIB = 1024 * 1024
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect",
        "host", "content-length"}


class DelayingProxy:
    """HTTP proxy on 127.0.0.1 in front of moto; ``copy_delay`` holds each UploadPartCopy."""

    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self.copy_delay = 0.0
        self.part_copies: list[str] = []  # the path of every UploadPartCopy seen
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Content-Length") is not None:
                    return self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return b""

            def _forward(self) -> None:
                body = self._body()
                query = parse_qs(urlsplit(self.path).query)
                if self.command == "PUT" and "uploadId" in query and "x-amz-copy-source" in self.headers:
                    proxy.part_copies.append(urlsplit(self.path).path)
                    time.sleep(proxy.copy_delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                                 headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP:
                            self.send_header(k, v)
                    length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                    self.send_header("Content-Length", length)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def s3_stack(moto_s3_server: str, pg_database: str, redis_client) -> Iterator[SimpleNamespace]:  # type: ignore[no-untyped-def]
    """moto behind the proxy, a bucket, the API on S3, a relay worker and a files+gc worker."""
    from app.api import create_app
    from app.db import reset_engine
    from app.services.auth import create_api_key
    from app.settings import get_settings, set_settings

    proxy = DelayingProxy(moto_s3_server)
    bucket = f"files-{uuid.uuid4().hex[:12]}"
    env = {
        "STORAGE_BACKEND": "s3", "S3_ENDPOINT_URL": proxy.url, "S3_BUCKET": bucket, "S3_REGION": "us-east-1",
        "S3_ACCESS_KEY_ID": "testing", "S3_SECRET_ACCESS_KEY": "testing",
        "FILES_MERGE_LEASE_SECONDS": "3",
    }
    original = get_settings()
    settings = original.model_copy(update={
        "storage_backend": "s3", "s3_endpoint_url": proxy.url, "s3_bucket": bucket, "s3_region": "us-east-1",
        "s3_access_key_id": "testing", "s3_secret_access_key": SecretStr("testing"),
    })
    storage = get_storage(settings)
    assert isinstance(storage, S3Storage)
    storage.ensure_bucket()
    app = create_app(settings)
    with session_scope() as session:
        _, token = create_api_key(session, "files-s3")
    relay = Worker(["outbox"], name="files-relay", pool="threads", concurrency=2, extra_env=env).start()
    merger = Worker(["files", "gc"], name="files-s3", pool="prefork", concurrency=1, extra_env=env).start()
    try:
        relay.wait_ready()
        merger.wait_ready()
        yield SimpleNamespace(client=app.test_client(), headers={"Authorization": f"Bearer {token}"},
                              storage=storage, proxy=proxy, merger=merger, bucket=bucket)
    finally:
        errors = []
        for worker in (relay, merger):
            try:
                if worker.stop() not in (0, None):
                    errors.append(worker.log_tail())
            except AssertionError as exc:
                errors.append(str(exc))
        proxy.close()
        set_settings(original)
        reset_engine()
        for key in storage.list(""):
            storage.delete(key)
        assert not errors, "\n".join(errors)


def _data(size: int, seed: int) -> bytes:
    block = hashlib.sha256(f"e2e-{seed}".encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


def _upload(stack: SimpleNamespace, data: bytes, name: str = "video.mp4") -> dict:
    """Create the upload and PUT every chunk to its presigned URL (over HTTP, no API key)."""
    resp = stack.client.post("/api/files", headers=stack.headers,
                             json={"filename": name, "size": len(data), "chunk_size": 5 * MIB})
    assert resp.status_code == 201, resp.get_json()
    created = resp.get_json()
    for chunk in created["chunks"]:
        assert chunk["url"].startswith(stack.proxy.url) and "Signature=" in chunk["url"]
        body = data[chunk["offset"]:chunk["offset"] + chunk["size"]]
        # A raw body: without a Content-Type urllib would label it a form, and S3 servers parse forms.
        req = urllib.request.Request(chunk["url"], data=body, method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
    return created


def _status(stack: SimpleNamespace, file_id: str) -> dict:
    return stack.client.get(f"/api/files/{file_id}", headers=stack.headers).get_json()


def _wait_status(stack: SimpleNamespace, file_id: str, timeout: float = 60) -> dict:
    return wait_for(lambda: (s := _status(stack, file_id))["status"] in ("COMPLETED", "FAILED") and s,
                    timeout=timeout, message=f"file {file_id} merged")  # type: ignore[return-value]


def _wait_chunks_gone(stack: SimpleNamespace, file_id: str) -> None:
    # Chunks are deleted right after the COMPLETED commit (never before it).
    wait_for(lambda: stack.storage.list(chunk_prefix(file_id)) == [], timeout=30, message="chunks deleted")


def _download(url: str) -> bytes:
    assert url.startswith("http://127.0.0.1:")  # loopback only
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def _uploads_in_progress(stack: SimpleNamespace) -> list[dict]:
    return stack.storage.client.list_multipart_uploads(Bucket=stack.bucket).get("Uploads", [])


def test_17_mib_in_4_chunks_merged_server_side(s3_stack: SimpleNamespace) -> None:
    data = _data(17 * MIB, 1)
    created = _upload(s3_stack, data)
    file_id = created["id"]
    assert [c["size"] for c in created["chunks"]] == [5 * MIB, 5 * MIB, 5 * MIB, 2 * MIB]
    assert _status(s3_stack, file_id)["chunks_received"] == 4

    done = s3_stack.client.post(f"/api/files/{file_id}/complete", headers=s3_stack.headers)
    assert done.status_code == 202, done.get_json()
    final = _wait_status(s3_stack, file_id)
    assert final["status"] == "COMPLETED", final
    copies = [p for p in s3_stack.proxy.part_copies if p.endswith(f"/{object_key(file_id)}")]
    assert len(copies) == 4  # one UploadPartCopy per chunk

    assert hashlib.sha256(_download(final["download_url"])).hexdigest() == hashlib.sha256(data).hexdigest()
    assert final["final_size"] == len(data) and final["checksum"].endswith("-4")
    # The merge worker received no chunk bytes: measured on its S3 client, responses + headers.
    assert 0 < final["merge_bytes_received"] < 64 * 1024, final["merge_bytes_received"]
    _wait_chunks_gone(s3_stack, file_id)
    assert s3_stack.storage.list(f"files/{file_id}/") == [object_key(file_id)]
    with session_scope() as session:
        assert session.scalars(select(FileChunk).where(FileChunk.file_id == file_id)).all() == []
    assert _uploads_in_progress(s3_stack) == []


def test_worker_killed_mid_merge_is_redelivered_and_leaves_one_object(s3_stack: SimpleNamespace) -> None:
    data = _data(17 * MIB, 2)
    file_id = _upload(s3_stack, data, name="killed.bin")["id"]
    s3_stack.proxy.copy_delay = 1.5  # each part copy takes 1.5 s: the merge is slow enough to catch
    try:
        assert s3_stack.client.post(f"/api/files/{file_id}/complete", headers=s3_stack.headers).status_code == 202

        def mid_merge() -> bool:
            with session_scope() as session:
                f = session.get(File, file_id)
                return f is not None and f.status == "MERGING" and f.upload_id is not None and f.merge_parts_done >= 1

        wait_for(mid_merge, timeout=30, message="merge in progress")
        children = s3_stack.merger.child_pids()
        assert children
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        stale = [u["UploadId"] for u in _uploads_in_progress(s3_stack)]
        assert len(stale) == 1  # what the killed attempt left behind
    finally:
        s3_stack.proxy.copy_delay = 0.0

    final = _wait_status(s3_stack, file_id, timeout=90)
    assert final["status"] == "COMPLETED", final
    assert final["merge_attempts"] == 2
    assert _uploads_in_progress(s3_stack) == []  # the stale upload was aborted, the new one completed
    _wait_chunks_gone(s3_stack, file_id)
    assert s3_stack.storage.list(f"files/{file_id}/") == [object_key(file_id)]
    assert hashlib.sha256(_download(final["download_url"])).hexdigest() == hashlib.sha256(data).hexdigest()


def test_gc_worker_cleans_abandoned_uploads_and_spares_fresh_ones(s3_stack: SimpleNamespace) -> None:
    from app.celery_app import celery_app

    storage = s3_stack.storage
    old = _upload(s3_stack, _data(6 * MIB, 3), name="old.bin")["id"]
    time.sleep(0.2)
    fresh = _upload(s3_stack, _data(6 * MIB, 4), name="fresh.bin")["id"]
    # Chunks sent through presigned URLs have no rows until complete: the GC finds them by prefix.
    assert len(storage.list(chunk_prefix(old))) == 2 and len(storage.list(chunk_prefix(fresh))) == 2
    storage.client.create_multipart_upload(Bucket=s3_stack.bucket, Key="files/someone-crashed/data")

    with session_scope() as session:
        t_old = session.get(File, old).last_activity_at
        t_fresh = session.get(File, fresh).last_activity_at
    # The clock moved forward: "now" is 24 h after a moment between the two uploads' activity.
    now = t_old + (t_fresh - t_old) / 2 + timedelta(hours=24)

    def run() -> dict:
        result = celery_app.send_task("app.tasks.gc.collect_uploads", kwargs={"now": now.isoformat()})
        return result.get(timeout=60)

    first = run()
    assert first["skipped"] is False and first["abandoned"] >= 1 and first["multipart_aborted"] == 1, first
    with session_scope() as session:
        gone, kept = session.get(File, old), session.get(File, fresh)
        assert gone.status == FAILED and gone.failure_reason.startswith("abandoned")
        assert kept.status == UPLOADING and kept.failure_reason is None
        last = session.scalars(select(JobRun).where(JobRun.job == "upload-gc").order_by(JobRun.id.desc())).first()
        assert last.outcome == "ok" and last.counts["abandoned"] == first["abandoned"]
    assert storage.list(chunk_prefix(old)) == []
    assert storage.list(chunk_prefix(fresh)) == [chunk_key(fresh, 0), chunk_key(fresh, 1)]
    assert _uploads_in_progress(s3_stack) == []
    blocked = s3_stack.client.put(f"/api/files/{old}/chunks/0", data=b"x" * 5 * MIB, headers=s3_stack.headers)
    assert blocked.status_code == 409
    refused = s3_stack.client.post(f"/api/files/{old}/complete", headers=s3_stack.headers)
    assert refused.status_code == 409 and "abandoned" in refused.get_json()["error"]["message"]

    second = run()
    assert (second["abandoned"], second["uploads_cleaned"], second["chunk_objects_deleted"],
            second["multipart_aborted"]) == (0, 0, 0, 0), second
    assert storage.list(chunk_prefix(fresh)) == [chunk_key(fresh, 0), chunk_key(fresh, 1)]
