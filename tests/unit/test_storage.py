"""The storage interface, one suite run against both backends (local directory, S3 on moto)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask

import app.storage as storage_module
from app.api import create_app
from app.settings import Settings
from app.storage import (
    ComposeRejected,
    LocalStorage,
    Part,
    S3Storage,
    Storage,
    StorageError,
    StorageKeyNotFound,
    StorageTokenExpired,
    StorageTokenInvalid,
    StorageUnavailable,
    get_storage,
    s3_etag,
)

MiB = 1024 * 1024


def local_settings(tmp_path: Path) -> Settings:
    return Settings(
        storage_backend="local",
        storage_local_root=tmp_path / "storage",
        database_url=f"sqlite:///{tmp_path}/t.db",
        secret_key="test-secret",  # type: ignore[arg-type]
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each backend in turn; the S3 one only starts moto when it is reached."""
    if request.param == "local":
        backend = get_storage(local_settings(tmp_path))
        assert isinstance(backend, LocalStorage)
        return backend
    backend = get_storage(request.getfixturevalue("s3_settings"))
    assert isinstance(backend, S3Storage)
    return backend


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes so misplaced ranges are caught."""
    block = hashlib.sha256(str(seed).encode()).digest() * 4096  # 128 KiB
    return (block * (size // len(block) + 1))[:size]


class ShortReads(io.RawIOBase):
    """A non-seekable stream that fills its first read, then hands out at most 64 KiB
    per read, like a socket after an initial burst."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        limit = len(buffer) if self._pos == 0 else 64 * 1024
        n = min(len(buffer), limit, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def read_all(storage: Storage, key: str) -> bytes:
    with storage.open(key) as f:
        return f.read()


def http_get(storage: Storage, url: str, tmp_path: Path) -> tuple[int, dict[str, str], bytes]:
    """Fetch a presigned URL for real: over HTTP from moto, or through the API's view."""
    if isinstance(storage, S3Storage):
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    client = create_app(local_settings(tmp_path)).test_client()
    resp = client.get(urlsplit(url).path)
    return resp.status_code, dict(resp.headers.items()), resp.get_data()


# --- both backends ------------------------------------------------------------


def test_put_exists_size_open_download_round_trip(storage: Storage, tmp_path: Path) -> None:
    data = pattern(300_000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)

    storage.put_file("docs/a.bin", src, content_type="application/pdf")
    storage.put_bytes("docs/b.txt", b"hello")

    assert storage.exists("docs/a.bin") and storage.exists("docs/b.txt")
    assert not storage.exists("docs/c.bin")
    assert storage.size("docs/a.bin") == len(data)
    assert storage.size("docs/b.txt") == 5
    assert read_all(storage, "docs/a.bin") == data
    dest = tmp_path / "out" / "a.bin"
    storage.download_to_path("docs/a.bin", dest)
    assert dest.read_bytes() == data

    storage.put_bytes("docs/b.txt", b"replaced")
    assert read_all(storage, "docs/b.txt") == b"replaced"


def test_put_stream_large_non_seekable(storage: Storage) -> None:
    data = pattern(12 * MiB, seed=1)
    # Short reads from a non-seekable stream: on S3 this is a multipart upload whose
    # parts must still be >= 5 MiB each, or moto (like S3) rejects it as EntityTooSmall.
    storage.put_stream("big/stream.bin", ShortReads(data))
    assert storage.size("big/stream.bin") == len(data)
    assert read_all(storage, "big/stream.bin") == data


def test_delete_is_idempotent(storage: Storage) -> None:
    storage.put_bytes("x/y", b"1")
    storage.delete("x/y")
    assert not storage.exists("x/y")
    assert "x/y" not in storage.list("")
    storage.delete("x/y")
    storage.delete("never/was")


def test_list_by_prefix_is_sorted_and_isolated(storage: Storage) -> None:
    for key in ["b/2", "a/1", "a/2/deep", "ab/3", "a-x", "b/1"]:
        storage.put_bytes(key, key.encode())
    assert storage.list("a/") == ["a/1", "a/2/deep"]
    assert storage.list("a") == ["a-x", "a/1", "a/2/deep", "ab/3"]
    assert storage.list("b/") == ["b/1", "b/2"]
    assert storage.list("a/2") == ["a/2/deep"]
    assert storage.list("zzz") == []
    assert storage.list("") == ["a-x", "a/1", "a/2/deep", "ab/3", "b/1", "b/2"]


def test_missing_key_raises_not_found(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(StorageKeyNotFound), storage.open("nope/missing"):
        pass
    with pytest.raises(StorageKeyNotFound):
        storage.download_to_path("nope/missing", tmp_path / "x")
    with pytest.raises(StorageKeyNotFound):
        storage.size("nope/missing")
    with pytest.raises(KeyError):  # callers may catch it as the KeyError it is
        storage.size("nope/missing")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "empty"),
        ("/abs", "starts with '/'"),
        ("a/../b", "'..'"),
        ("..", "'..'"),
        ("a\\b", "backslash"),
        ("a\x00b", "NUL"),
        ("/".join(["k" * 200] * 6), "longer than 1024"),
        ("k" * 256, "longer than 255"),
        (".tmp-x/y", "reserved prefix"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
    ],
)
def test_bad_keys_raise_value_error(storage: Storage, key: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        storage.put_bytes(key, b"x")
    with pytest.raises(ValueError, match=problem):
        storage.exists(key)
    with pytest.raises(ValueError, match=problem):
        storage.compose("ok", [Part(key, 1, "0" * 32)])
    with pytest.raises(ValueError, match=problem):
        storage.presigned_get_url(key)
    assert storage.list("") == []


def test_longest_key_is_accepted(storage: Storage) -> None:
    key = "/".join(["k" * 204] * 5)
    assert len(key) == 1024
    storage.put_bytes(key, b"x")
    assert storage.list("") == [key]


def parts_of(storage: Storage, blobs: list[bytes], prefix: str = "up/part-") -> list[Part]:
    """Store each blob as one part and describe it as compose wants it."""
    parts = []
    for i, data in enumerate(blobs):
        key = f"{prefix}{i}"
        md5 = hashlib.md5(data).hexdigest()
        storage.put_part(key, io.BytesIO(data), len(data), md5)
        parts.append(Part(key, len(data), md5))
    return parts


def test_compose_large_parts(storage: Storage) -> None:
    blobs = [pattern(5 * MiB + 1234, seed=7), pattern(5 * MiB, seed=8), pattern(4321, seed=9)]
    parts = parts_of(storage, blobs)
    calls = count_part_copies(storage)
    progress: list[tuple[object, ...]] = []

    done = storage.compose("done/large", parts, "video/mp4", on_progress=lambda *a: progress.append(a))

    whole = b"".join(blobs)
    assert (done.key, done.size) == ("done/large", len(whole))
    assert done.etag == s3_etag([p.md5 for p in parts])
    assert storage.size("done/large") == len(whole)
    assert read_all(storage, "done/large") == whole
    assert [a[0] for a in progress if len(a) == 1] == [1, 2, 3]
    for part in parts:  # the caller deletes the parts, not compose
        assert storage.exists(part.key)
    if storage.direct_uploads:  # S3: server-side, one UploadPartCopy per part, in order
        assert calls == [p.key for p in parts]
        assert done.sha256 is None and progress[0][0] == 0 and progress[0][1]
    else:
        assert done.sha256 == hashlib.sha256(whole).hexdigest()


def test_compose_single_part(storage: Storage) -> None:
    parts = parts_of(storage, [b"first"], "c/")
    done = storage.compose("c/copy", parts, "text/plain")
    assert read_all(storage, "c/copy") == b"first"
    assert done.etag == hashlib.md5(b"first").hexdigest() and done.size == 5


def test_compose_small_parts_only_locally(storage: Storage) -> None:
    blobs = [pattern(1000 + i * 777, seed=i) for i in range(3)]
    parts = parts_of(storage, blobs)
    if storage.direct_uploads:  # S3 composes server-side only from parts of 5 MiB and more
        with pytest.raises(ComposeRejected) as rejected:
            storage.compose("up/whole", parts)
        assert rejected.value.position == 0 and "5 MiB" in rejected.value.detail
        assert not storage.exists("up/whole")
    else:
        assert storage.compose("up/whole", parts).size == sum(map(len, blobs))
        assert read_all(storage, "up/whole") == b"".join(blobs)


def test_compose_refuses_a_changed_or_missing_part(storage: Storage) -> None:
    parts = parts_of(storage, [pattern(5 * MiB, seed=1), pattern(5 * MiB, seed=2), b"tail"])
    storage.put_bytes("m/dest", b"old")
    storage.put_bytes(parts[1].key, pattern(5 * MiB, seed=3))  # same size, other bytes
    with pytest.raises(ComposeRejected) as changed:
        storage.compose("m/dest", parts)
    assert changed.value.position == 1 and "changed" in changed.value.detail
    assert parts[1].key in str(changed.value)
    assert not storage.exists("m/dest") or read_all(storage, "m/dest") == b"old"

    storage.delete(parts[2].key)
    fixed = [parts[0], Part(parts[1].key, 5 * MiB, hashlib.md5(pattern(5 * MiB, seed=3)).hexdigest()), parts[2]]
    with pytest.raises(ComposeRejected) as missing:
        storage.compose("m/other", fixed)
    assert missing.value.position == 2 and "missing" in missing.value.detail
    assert not storage.exists("m/other")
    with pytest.raises(ValueError):
        storage.compose("m/dest", [])


def test_compose_stops_when_progress_raises(storage: Storage) -> None:
    parts = parts_of(storage, [pattern(5 * MiB, seed=4), b"end"])

    class Stop(Exception):
        pass

    def progress(done: int, upload_id: str | None = None) -> None:
        if done == 1:
            raise Stop

    with pytest.raises(Stop):
        storage.compose("s/dest", parts, on_progress=progress)
    assert not storage.exists("s/dest")
    if isinstance(storage, S3Storage):  # its multipart upload was aborted
        assert storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []) == []


def test_compose_aborts_what_a_killed_attempt_left(s3_settings: Settings) -> None:
    storage = get_storage(s3_settings)
    assert isinstance(storage, S3Storage)
    parts = parts_of(storage, [pattern(5 * MiB, seed=5), b"end"])
    storage.client.create_multipart_upload(Bucket=storage.bucket, Key="k/dest")
    assert storage.compose("k/dest", parts).aborted_uploads == 1
    assert storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []) == []


def test_put_part_checks_the_md5_on_s3(storage: Storage) -> None:
    storage.put_part("p/ok", io.BytesIO(b"12345"), 5, hashlib.md5(b"12345").hexdigest())
    assert read_all(storage, "p/ok") == b"12345"
    if storage.direct_uploads:
        # S3 refuses the body (BadDigest); moto stores it, and the ETag check refuses it.
        with pytest.raises(StorageError):
            storage.put_part("p/bad", io.BytesIO(b"12345"), 5, hashlib.md5(b"other").hexdigest())


def test_list_info_and_delete_prefix(storage: Storage) -> None:
    for key, data in [("d/x/1", b"a"), ("d/x/2", b"bcd"), ("d/y", b"keep")]:
        storage.put_bytes(key, data)
    info = storage.list_info("d/x/")
    assert [(o.key, o.size) for o in info] == [("d/x/1", 1), ("d/x/2", 3)]
    assert all(o.modified is not None and o.modified.tzinfo is not None for o in info)
    if storage.direct_uploads:
        assert info[1].etag == hashlib.md5(b"bcd").hexdigest()
    else:
        assert info[1].etag is None
    assert storage.delete_prefix("d/x/") == 2
    assert storage.list("d/") == ["d/y"]
    assert storage.delete_prefix("d/x/") == 0
    if isinstance(storage, LocalStorage):
        assert not (storage.root / "d" / "x").exists()


def test_presigned_put_url(storage: Storage) -> None:
    url = storage.presigned_put_url("put/here.bin", expires_in=60)
    if not storage.direct_uploads:
        assert url is None  # the bytes come through the API
        return
    assert url is not None
    request = urllib.request.Request(url, data=b"direct bytes", method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
    assert read_all(storage, "put/here.bin") == b"direct bytes"
    with pytest.raises(ValueError):
        storage.presigned_put_url("put/here.bin", expires_in=0)


def test_abort_incomplete_uploads(storage: Storage) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    if not isinstance(storage, S3Storage):
        assert storage.abort_incomplete_uploads(later) == 0
        return
    client, bucket = storage.client, storage.bucket
    kept = client.create_multipart_upload(Bucket=bucket, Key="a/live")["UploadId"]
    client.create_multipart_upload(Bucket=bucket, Key="a/dead")
    client.create_multipart_upload(Bucket=bucket, Key="b/elsewhere")
    # moto reports every upload as initiated in 2010: all are older than a cutoff of now.
    assert storage.abort_incomplete_uploads(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert storage.abort_incomplete_uploads(later, keep={"a/live"}, prefix="a/") == 1
    left = {u["Key"]: u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert left == {"a/live": kept, "b/elsewhere": left["b/elsewhere"]}


def test_sweep_temporary(storage: Storage) -> None:
    now = datetime.now(UTC)
    if not isinstance(storage, LocalStorage):
        assert storage.sweep_temporary(now, prefix="files/") == 0
        return
    storage.put_bytes("files/a/data", b"x")
    storage.put_bytes("files/b/data", b"y")
    old = storage.root / "files" / "a" / ".tmp-killed"
    live = storage.root / "files" / "b" / ".tmp-writing"
    fresh = storage.root / "files" / "a" / ".tmp-fresh"
    for path in (old, live, fresh):
        path.write_bytes(b"partial")
    for path in (old, live):
        os.utime(path, (time.time() - 7200,) * 2)
    assert storage.sweep_temporary(now - timedelta(hours=1), keep={"files/b/data"}, prefix="files/") == 1
    assert not old.exists() and live.exists() and fresh.exists()
    with pytest.raises(ValueError):
        storage.sweep_temporary(now, prefix="files")


def test_traffic_counts_network_bytes(storage: Storage) -> None:
    with storage.traffic() as outer:
        # put_part: one request in this thread (s3transfer's uploads run in its own threads).
        storage.put_part("t/a", io.BytesIO(b"x" * 1000), 1000, hashlib.md5(b"x" * 1000).hexdigest())
        with storage.traffic() as inner:
            assert read_all(storage, "t/a") == b"x" * 1000
    if not storage.direct_uploads:
        assert not outer.measured and outer.received == outer.sent == outer.requests == 0
        return
    assert outer.measured and inner.measured
    assert outer.sent > 1000 and outer.requests >= 2
    assert 1000 < inner.received <= outer.received
    with storage.traffic() as after:
        pass
    assert after.requests == 0


def test_unreachable_s3_is_storage_unavailable(s3_settings: Settings) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = get_storage(s3_settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{port}",
                                                      "s3_timeout": 1}))
    for call in (lambda: down.exists("k"), lambda: down.put_bytes("k", b"x"), lambda: down.list("")):
        with pytest.raises(StorageUnavailable):
            call()


def test_download_links_are_served_by_whoever_minted_them(storage: Storage) -> None:
    if isinstance(storage, LocalStorage):
        assert storage.link_base_url == storage.base_url
        return
    assert storage.link_base_url is None
    with pytest.raises(StorageTokenInvalid):
        storage.open_link("anything")


def test_presigned_url_downloads_the_bytes(storage: Storage, tmp_path: Path) -> None:
    data = pattern(200_000, seed=3)
    storage.put_bytes("pre/report.bin", data)

    url = storage.presigned_get_url("pre/report.bin", expires_in=120, filename="Rapport été.pdf")
    # For S3 this fetches from moto over real HTTP. moto accepts any signature and does
    # not enforce URL expiry, so only the local backend's expiry is tested (below).
    status, headers, body = http_get(storage, url, tmp_path)

    assert status == 200
    assert body == data
    disposition = headers.get("Content-Disposition") or headers.get("content-disposition") or ""
    assert disposition.startswith("attachment")
    assert "filename*=UTF-8''Rapport%20%C3%A9t%C3%A9.pdf" in disposition

    plain = storage.presigned_get_url("pre/report.bin")
    assert http_get(storage, plain, tmp_path)[2] == data


def test_presign_rejects_bad_expiry_and_filename(storage: Storage) -> None:
    with pytest.raises(ValueError):
        storage.presigned_get_url("k", expires_in=0)
    with pytest.raises(ValueError):
        storage.presigned_get_url("k", expires_in=8 * 24 * 3600)
    with pytest.raises(ValueError):
        storage.presigned_get_url("k", filename="a\r\nSet-Cookie: x")


def test_check_passes(storage: Storage) -> None:
    storage.check()


# --- S3 only ------------------------------------------------------------------


def test_s3_check_fails_without_bucket(s3_settings: Settings) -> None:
    missing = get_storage(s3_settings.model_copy(update={"s3_bucket": "no-such-bucket-here"}))
    with pytest.raises(Exception):
        missing.check()


def count_part_copies(storage: Storage) -> list[str]:
    """Source keys of every UploadPartCopy the S3 client sends (stays empty for local)."""
    calls: list[str] = []
    if isinstance(storage, S3Storage):
        def record(params: dict, **_: object) -> None:
            calls.append(params["CopySource"]["Key"])

        storage.client.meta.events.register("provide-client-params.s3.UploadPartCopy", record)
    return calls


# --- local only: the download route ------------------------------------------------


@pytest.fixture
def local_app(tmp_path: Path) -> Iterator[tuple[Flask, LocalStorage]]:
    settings = local_settings(tmp_path)
    backend = get_storage(settings)
    assert isinstance(backend, LocalStorage)
    yield create_app(settings), backend


def test_local_link_expires(local_app: tuple[Flask, LocalStorage], monkeypatch: pytest.MonkeyPatch) -> None:
    app, backend = local_app
    backend.put_bytes("exp/file.txt", b"short-lived")
    path = urlsplit(backend.presigned_get_url("exp/file.txt", expires_in=30)).path
    client = app.test_client()

    resp = client.get(path)
    assert resp.status_code == 200
    assert resp.get_data() == b"short-lived"
    assert "max-age=0" in resp.headers["Cache-Control"]

    real = storage_module._wall_clock()
    monkeypatch.setattr(storage_module, "_wall_clock", lambda: real + 31)
    resp = client.get(path)
    assert resp.status_code == 403
    assert resp.get_json()["error"]["code"] == "link_expired"


def test_local_token_clock_boundary(tmp_path: Path) -> None:
    now = [1_000_000.0]
    backend = LocalStorage(tmp_path, b"k", "http://x", 60, clock=lambda: now[0])
    token = backend.presigned_get_url("a/b", expires_in=10, filename="b.txt").rsplit("/", 1)[1]
    now[0] += 9.9
    assert backend.verify_download_token(token) == ("a/b", "b.txt")
    now[0] += 0.2
    with pytest.raises(StorageTokenExpired):
        backend.verify_download_token(token)
    other = LocalStorage(tmp_path, b"other-key", "http://x", 60, clock=lambda: 0.0)
    with pytest.raises(StorageTokenInvalid):
        other.verify_download_token(token)


def test_local_tampered_token_is_refused(local_app: tuple[Flask, LocalStorage]) -> None:
    app, backend = local_app
    backend.put_bytes("t/secret.txt", b"secret")
    backend.put_bytes("t/other.txt", b"other")
    path = urlsplit(backend.presigned_get_url("t/secret.txt")).path
    client = app.test_client()
    assert client.get(path).status_code == 200

    prefix, token = path.rsplit("/", 1)
    payload, signature = token.rsplit(".", 1)
    # The first character: the last one of a base64 signature partly encodes padding bits.
    forged_sig = ("A" if signature[0] != "A" else "B") + signature[1:]
    forged_payload = LocalStorage(backend.root, b"attacker", backend.base_url, 60).presigned_get_url(
        "t/other.txt"
    ).rsplit("/", 1)[1]
    for bad in (f"{payload}.{forged_sig}", forged_payload, "garbage"):
        resp = client.get(f"{prefix}/{bad}")
        assert resp.status_code == 403, bad
        assert resp.get_json()["error"]["code"] == "invalid_link"


def test_local_deleted_object_is_404(local_app: tuple[Flask, LocalStorage]) -> None:
    app, backend = local_app
    backend.put_bytes("gone/file.bin", b"bytes")
    path = urlsplit(backend.presigned_get_url("gone/file.bin")).path
    client = app.test_client()
    assert client.get(path).get_data() == b"bytes"

    backend.delete("gone/file.bin")
    resp = client.get(path)
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"


def test_local_download_supports_ranges_and_etag(local_app: tuple[Flask, LocalStorage]) -> None:
    app, backend = local_app
    backend.put_bytes("r/data.bin", bytes(range(256)))
    path = urlsplit(backend.presigned_get_url("r/data.bin")).path
    client = app.test_client()

    resp = client.get(path, headers={"Range": "bytes=10-19"})
    assert resp.status_code == 206
    assert resp.get_data() == bytes(range(10, 20))

    # Streamed from the open file, not read into memory first (spectree would buffer a
    # flask.Response body to validate it).
    streamed = client.get(path, buffered=False)
    assert streamed.is_streamed
    streamed.close()

    etag = client.get(path).headers["ETag"]
    assert client.get(path, headers={"If-None-Match": etag}).status_code == 304


def test_download_route_is_404_with_s3_backend(s3_settings: Settings) -> None:
    client = create_app(s3_settings).test_client()
    resp = client.get("/storage/download/anything")
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"


def test_download_route_is_in_openapi(local_app: tuple[Flask, LocalStorage]) -> None:
    app, _ = local_app
    resp = app.test_client().get("/openapi.json")
    assert resp.status_code == 200
    operation = resp.get_json()["paths"]["/storage/download/{token}"]["get"]
    assert {"200", "206", "304", "403", "404"} <= set(operation["responses"])
    assert operation["tags"] == ["storage"]


def test_local_writes_are_atomic_and_leave_no_temp_files(tmp_path: Path) -> None:
    backend = get_storage(local_settings(tmp_path))
    assert isinstance(backend, LocalStorage)
    backend.put_bytes("w/file", b"v1")

    class Boom(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            raise OSError("connection lost")

    with pytest.raises(OSError, match="connection lost"):
        backend.put_stream("w/file", Boom())
    assert read_all(backend, "w/file") == b"v1"  # the failed write left the old object
    assert os.listdir(backend.root / "w") == ["file"]
    assert backend.list("") == ["w/file"]
