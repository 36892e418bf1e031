"""The hostile-inputs catalogue: the bad inputs of every family, each with the answer the
served API (gunicorn, the real HTTP stack) must give.

One parametrized test over ``CASES``. Each case names its family, what is wrong, the
request, the expected status and a piece of text the answer must contain that names
the problem: the JSON error body's message/details for the application's refusals; the
upload's own ``error`` where the family records a refused file as ``failed`` (OCR);
gunicorn's HTML page where gunicorn answers before the application (a header or a
request line over its limits).

Inputs the API accepts by design and a worker refuses (a decompression bomb, a
loopback or metadata URL, undecodable audio) are covered end to end by the families'
integration tests; docs/reliability.md lists where.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from tests.security.conftest import Served

MIB = 1024 * 1024


def _png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def _json(raw: bytes | str) -> dict[str, Any]:
    return {"data": raw.encode() if isinstance(raw, str) else raw, "headers": {"Content-Type": "application/json"}}


@dataclass(frozen=True)
class Case:
    """One hostile input and the answer it must get."""

    family: str
    what: str
    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    status: int = 400
    needle: str = ""
    #: ``error``: the JSON error body; ``upload``: the created upload's ``error`` (OCR
    #: records refused bytes as failed); ``html``: gunicorn's own page; ``body``: any JSON.
    where: str = "error"
    #: ``client``, ``none``, or a literal Authorization header value.
    auth: str = "client"

    @property
    def id(self) -> str:
        return f"{self.family}: {self.what}"


MESSAGE = {"conversation_id": "c1", "channel": "whatsapp", "recipient": "+15550001", "content": "hello"}

CASES = [
    # --- OCR uploads ---------------------------------------------------------------------
    Case("ocr", "empty file", "POST", "/api/uploads", {"files": {"file": ("card.png", b"", "image/png")}},
         201, "the file is empty (0 bytes)", "upload"),
    Case("ocr", "text file named .png", "POST", "/api/uploads",
         {"files": {"file": ("card.png", b"just some text, not an image at all", "image/png")}},
         201, "unsupported file type text/plain (detected from the content, not the name)", "upload"),
    Case("ocr", "Windows executable", "POST", "/api/uploads",
         {"files": {"file": ("card.jpg", b"MZ\x90\x00\x03" + b"\x00" * 200, "image/jpeg")}},
         201, "unsupported file type application/x-dosexec", "upload"),
    Case("ocr", "HTML named .pdf", "POST", "/api/uploads",
         {"files": {"file": ("card.pdf", b"<html><script>alert(1)</script></html>", "application/pdf")}},
         201, "unsupported file type text/html", "upload"),
    Case("ocr", "multipart without the file part", "POST", "/api/uploads",
         {"files": {"other": ("card.png", _png(10, 10), "image/png")}}, 400, "invalid request: file"),
    Case("ocr", "file over OCR_MAX_FILE_BYTES (20 MiB)", "POST", "/api/uploads",
         {"files": {"file": ("big.png", b"\x00" * (21 * MIB), "image/png")}}, 413, "over the limit of 20,971,520 bytes"),
    Case("ocr", "JSON start without a filename", "POST", "/api/uploads", {"json": {}}, 400, "filename"),
    # --- URL scans -----------------------------------------------------------------------
    Case("scans", "ftp: scheme", "POST", "/api/scans", {"json": {"url": "ftp://example.com/file"}},
         400, "scheme ftp: is not allowed; only http and https URLs are scanned"),
    Case("scans", "file: scheme", "POST", "/api/scans", {"json": {"url": "file:///etc/passwd"}}, 400, "scheme file:"),
    Case("scans", "javascript: scheme", "POST", "/api/scans", {"json": {"url": "javascript:alert(1)"}},
         400, "scheme javascript:"),
    Case("scans", "gopher: scheme (SSRF classic)", "POST", "/api/scans",
         {"json": {"url": "gopher://127.0.0.1:6379/_FLUSHALL"}}, 400, "scheme gopher:"),
    Case("scans", "credentials in the URL", "POST", "/api/scans", {"json": {"url": "http://admin:pw@example.com/"}},
         400, "the URL contains user information"),
    Case("scans", "URL over 2048 characters", "POST", "/api/scans",
         {"json": {"url": "http://example.com/" + "a" * 3000}}, 400, "at most 2048 characters"),
    Case("scans", "whitespace in the host", "POST", "/api/scans", {"json": {"url": "http://exa mple.com/"}},
         400, "whitespace or control characters"),
    Case("scans", "CR/LF header injection", "POST", "/api/scans",
         {"json": {"url": "http://example.com/\r\nX-Injected: 1"}}, 400, "whitespace or control characters"),
    Case("scans", "no host", "POST", "/api/scans", {"json": {"url": "http:///etc/passwd"}}, 400, "the URL has no host"),
    Case("scans", "port out of range", "POST", "/api/scans", {"json": {"url": "http://example.com:99999/"}},
         400, "port is not a number between 0 and 65535"),
    Case("scans", "URL that is not a string", "POST", "/api/scans", {"json": {"url": ["http://example.com"]}},
         400, "Input should be a valid string"),
    Case("scans", "unknown state filter", "GET", "/api/scans?state=HACKED", {}, 400, "unknown state"),
    # --- voice ---------------------------------------------------------------------------
    Case("voice", "transcript is a number", "POST", "/api/voice", {"json": {"transcript": 42}},
         400, "Input should be a valid string"),
    Case("voice", "transcript is a list", "POST", "/api/voice", {"json": {"transcript": ["call", "me"]}},
         400, "Input should be a valid string"),
    Case("voice", "transcript over 20,000 characters", "POST", "/api/voice", {"json": {"transcript": "a" * 20001}},
         400, "at most 20000 characters"),
    Case("voice", "nothing to score", "POST", "/api/voice", {"json": {"metadata": {"a": 1}}}, 400, "nothing to score"),
    Case("voice", "metadata that is not JSON (multipart)", "POST", "/api/voice",
         {"files": {"audio": ("a.wav", b"RIFF", "audio/wav")}, "data": {"metadata": "{not json"}},
         400, "metadata: not valid JSON"),
    Case("voice", "metadata that is a JSON list (multipart)", "POST", "/api/voice",
         {"files": {"audio": ("a.wav", b"RIFF", "audio/wav")}, "data": {"metadata": "[1, 2]"}},
         400, "metadata: must be a JSON object"),
    Case("voice", "unknown target", "POST", "/api/voice", {"json": {"transcript": "hi", "target": "gpu"}},
         400, "target"),
    Case("voice", "audio_url with a non-http scheme", "POST", "/api/voice", {"json": {"audio_url": "file:///etc/passwd"}},
         400, "String should match pattern"),
    Case("voice", "storage_key escaping the store", "POST", "/api/voice", {"json": {"storage_key": "../../etc/passwd"}},
         400, "'..' segment"),
    Case("voice", "storage_key of nothing", "POST", "/api/voice", {"json": {"storage_key": "voice/none.wav"}},
         400, "no object at storage key"),
    Case("voice", "audio over VOICE_MAX_AUDIO_BYTES (25 MiB)", "POST", "/api/voice",
         {"files": {"audio": ("big.wav", b"\x00" * (26 * MIB), "audio/wav")}}, 413, "audio is limited to 26,214,400 bytes"),
    # --- JSON bodies (any family) ------------------------------------------------------------
    Case("json", "malformed JSON", "POST", "/api/messages", _json('{"conversation_id": '),
         400, "body is not valid JSON"),
    Case("json", "a JSON array instead of an object", "POST", "/api/messages", _json("[]"),
         400, "body is not a JSON object"),
    Case("json", "JSON null", "POST", "/api/admin/workers", _json("null"), 400, "body is not a JSON object",
         auth="admin"),
    Case("json", "wrong types everywhere", "POST", "/api/messages",
         {"json": {"conversation_id": 1, "channel": True, "recipient": None, "content": {"a": 1}}},
         400, "conversation_id, channel, recipient, content"),
    Case("json", "unknown channel", "POST", "/api/messages", {"json": MESSAGE | {"channel": "sms"}}, 400, "channel"),
    Case("json", "100,000 nested arrays", "POST", "/api/messages", _json("[" * 100_000 + "]" * 100_000),
         400, "body is not valid JSON"),
    Case("json", "5,000 nested objects in metadata", "POST", "/api/voice",
         _json('{"transcript": "hi", "metadata": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}"),
         400, "body is not valid JSON"),
    Case("json", "NUL character in a string", "POST", "/api/messages", {"json": MESSAGE | {"conversation_id": "c\x00"}},
         400, "NUL characters are not allowed"),
    Case("json", "NUL character in a path", "GET", "/api/messages/abc%00def", {}, 400, "NUL characters are not allowed"),
    Case("json", "content over MESSAGE_MAX_LENGTH", "POST", "/api/messages", {"json": MESSAGE | {"content": "a" * 5000}},
         400, "longer than 4096 characters"),
    Case("json", "body over MAX_REQUEST_BYTES (50 MiB)", "POST", "/api/messages",
         _json(b'{"content": "' + b"a" * (51 * MIB) + b'"}'), 413, "exceeds the capacity limit"),
    # --- chunked files -----------------------------------------------------------------------
    Case("files", "negative size", "POST", "/api/files", {"json": {"filename": "a.bin", "size": -1}},
         400, "greater than or equal to 1"),
    Case("files", "size over FILES_MAX_SIZE", "POST", "/api/files", {"json": {"filename": "a.bin", "size": 10**13}},
         413, "exceeds the limit of 5368709120 bytes"),
    Case("files", "chunk size under S3's 5 MiB part", "POST", "/api/files",
         {"json": {"filename": "a.bin", "size": 100, "chunk_size": 10}}, 400, "chunk_size must be between"),
    Case("files", "content type that is not a MIME type", "POST", "/api/files",
         {"json": {"filename": "a.bin", "size": 10, "content_type": "not a type"}}, 400, "is not a MIME type"),
    Case("files", "path traversal in the filename (sanitized)", "POST", "/api/files",
         {"json": {"filename": "../../etc/passwd", "size": 10}}, 201, '"filename": "passwd"', "body"),
    Case("files", "chunk index past the last chunk", "PUT", "/api/files/{file}/chunks/7", {"data": b"x" * 10},
         400, "chunk_index_out_of_range"),
    Case("files", "negative chunk index", "PUT", "/api/files/{file}/chunks/-1", {"data": b"x" * 10},
         400, "chunk_index_out_of_range"),
    Case("files", "chunk of the wrong size", "PUT", "/api/files/{file}/chunks/0", {"data": b"x" * 3},
         400, "wrong_chunk_size"),
    Case("files", "chunk whose X-Chunk-SHA256 does not match", "PUT", "/api/files/{file}/chunks/0",
         {"data": b"x" * 10, "headers": {"X-Chunk-SHA256": "0" * 64}}, 400, "checksum_mismatch"),
    Case("files", "complete with chunks missing", "POST", "/api/files/{file}/complete", {}, 409, "chunks_missing"),
    Case("files", "chunk of a file that does not exist", "PUT", "/api/files/nope/chunks/0", {"data": b"x"},
         404, "not_found"),
    # --- headers and transport -----------------------------------------------------------------
    Case("headers", "1 MB header (gunicorn answers)", "GET", "/api/me", {"headers": {"X-Big": "a" * MIB}},
         431, "Request Header Fields Too Large", "html"),
    Case("headers", "9 KB header, over gunicorn's 8190", "GET", "/api/me", {"headers": {"X-Big": "a" * 9000}},
         431, "Request Header Fields Too Large", "html"),
    Case("headers", "200 headers, over gunicorn's 100", "GET", "/api/me",
         {"headers": {f"X-H{i}": "a" for i in range(200)}}, 431, "Request Header Fields Too Large", "html"),
    Case("headers", "request line over 4094 bytes", "GET", "/api/scans/" + "a" * 5000, {}, 414, "URI Too Long", "html"),
    Case("headers", "text/plain body on a JSON route", "POST", "/api/messages",
         {"data": b"conversation_id=c1", "headers": {"Content-Type": "text/plain"}}, 415, "send the body as application/json"),
    Case("headers", "XML body on a JSON route", "POST", "/api/scans",
         {"data": b"<url>http://example.com</url>", "headers": {"Content-Type": "application/xml"}},
         415, "not application/xml"),
    Case("headers", "no Authorization header", "POST", "/api/messages", {"json": MESSAGE}, 401,
         "missing bearer token", auth="none"),
    Case("headers", "Basic instead of Bearer", "GET", "/api/me", {}, 401, "missing bearer token", auth="Basic YTpi"),
    Case("headers", "unknown API key", "GET", "/api/me", {}, 401, "unknown or revoked API key",
         auth="Bearer ak_" + "x" * 43),
    Case("headers", "an API key padded with 1 KB", "GET", "/api/me", {}, 401, "unknown or revoked API key",
         auth="Bearer ak_" + "x" * 1024),
    Case("headers", "wrong method", "PATCH", "/api/messages", {}, 405, "method is not allowed"),
]


@pytest.fixture(scope="module")
def file_id(served_api: Served) -> str:
    """A 10-byte upload (one chunk) for the chunk cases."""
    resp = requests.post(served_api.url("/api/files"), json={"filename": "t.bin", "size": 10},
                         headers=served_api.client, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def _auth(served: Served, case: Case) -> dict[str, str]:
    if case.auth == "client":
        return served.client
    if case.auth == "admin":
        return served.admin
    if case.auth == "none":
        return {}
    return {"Authorization": case.auth}


def test_the_catalogue_covers_every_family() -> None:
    assert {c.family for c in CASES} == {"ocr", "scans", "voice", "json", "files", "headers"}
    assert len({c.id for c in CASES}) == len(CASES), "case names must be unique"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_with_a_reason(served_api: Served, file_id: str, case: Case) -> None:
    kwargs: dict[str, Any] = dict(case.kwargs)
    headers = _auth(served_api, case) | kwargs.pop("headers", {})
    resp = requests.request(case.method, served_api.url(case.path.format(file=file_id)), headers=headers,
                            timeout=120, **kwargs)
    assert resp.status_code == case.status, f"{case.id}: {resp.status_code} {resp.text[:500]}"
    if case.where == "html":  # gunicorn itself, before the application
        assert resp.headers["Content-Type"].startswith("text/html") and case.needle in resp.text
        return
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers["Content-Type"]
    body = resp.json()
    if case.where == "upload":
        assert body["status"] == "failed" and case.needle in body["error"], body
    elif case.where == "body":
        assert case.needle in json.dumps(body), body
    else:
        error = body["error"]
        assert error["code"] and error["message"], body
        assert case.needle in json.dumps(error), f"{case.id}: {case.needle!r} not in {error}"


def test_no_hostile_input_caused_a_server_error(served_api: Served) -> None:
    """gunicorn's log of the catalogue run: not one 5xx and not one unhandled error."""
    log = served_api.log_path.read_text(errors="replace")
    assert '"unhandled error"' not in log
    statuses = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("logger") == "gunicorn.access":
            statuses.append(entry["message"].split()[2])
    assert statuses, "no access log lines: the check would prove nothing"
    assert not [s for s in statuses if s.startswith("5")]

