"""Object storage: one ``Storage`` interface, a local-directory backend and an S3 backend.

Tasks and views store blobs (uploads, scans, audio, results) by key and never touch the
filesystem or boto3 directly, so a deployment moves from one machine's disk to MinIO or
AWS S3 by changing ``STORAGE_BACKEND`` alone. Both backends behave the same for every
operation below (the tests run one suite against both); where they cannot, the
difference is written in the method's docstring.

Keys are ``/``-separated, S3-style (``scans/2024/abc.pdf``); ``validate_key`` states the
rules, which keep every key a safe relative path under the local root.

Callers never test which backend they hold: what differs is a capability the interface
states (``direct_uploads``: clients may PUT objects straight to the store) or an answer
(``presigned_put_url`` is ``None`` where there is none). Errors reach callers as the
classes below, never as boto3's: ``StorageUnavailable`` is worth a retry,
``StorageRefused`` and ``ComposeRejected`` are not.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import io
import logging
import math
import mimetypes
import os
import shutil
import tempfile
import threading
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, NamedTuple, cast
from urllib.parse import quote

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from itsdangerous import BadSignature, URLSafeSerializer

if TYPE_CHECKING:
    from botocore.client import BaseClient

    from app.settings import Settings

logger = logging.getLogger(__name__)

#: Longest key, in UTF-8 bytes: S3's own limit, applied to both backends alike.
MAX_KEY_BYTES = 1024
#: Lifetime bounds of a download URL; 7 days is the most an S3 SigV4 URL can live.
MIN_EXPIRY_SECONDS = 1
MAX_EXPIRY_SECONDS = 7 * 24 * 3600
#: Longest segment between slashes, in UTF-8 bytes: the usual filesystem name limit.
MAX_SEGMENT_BYTES = 255
#: Name prefix of in-progress local writes; keys may not use it so ``list`` can skip them.
TMP_PREFIX = ".tmp-"

_COPY_CHUNK = 1024 * 1024
_TOKEN_SALT = "app.storage.download"

# S3 multipart limits (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html).
S3_MIN_PART_BYTES = 5 * 1024 * 1024
S3_MAX_COPY_BYTES = 5 * 1024 * 1024 * 1024
S3_MAX_PARTS = 10_000

#: Transfers of non-seekable streams hold ``max_in_memory_upload_chunks`` chunks in
#: memory; 4 x 8 MiB keeps an upload's footprint near 32 MiB whatever its size.
S3_TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=8 * 1024 * 1024,
    multipart_chunksize=8 * 1024 * 1024,
    max_concurrency=4,
)
# s3transfer's setting, which boto3's constructor does not take as an argument.
S3_TRANSFER_CONFIG.max_in_memory_upload_chunks = 4


class StorageError(Exception):
    """Base class of the storage errors the application handles."""


class StorageKeyNotFound(StorageError, KeyError):
    """The key names no object (raised by open, download_to_path, size, compose)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no object at storage key {self.key!r}"


class StorageUnavailable(StorageError):
    """The store could not be reached or answered that it is busy or failing (timeouts,
    refused connections, 5xx, throttling): the same call may succeed later."""


class StorageRefused(StorageError):
    """The store answered that this request cannot succeed as it is (access denied, a
    malformed request): retrying it unchanged will not help."""


class ComposeRejected(StorageError):
    """``compose`` cannot make the object the parts promise: a part is missing, is not
    the bytes recorded for it, is of a size the store cannot compose, or the result does
    not verify. ``position`` is the offending part's place in the list and ``key`` its
    key, when one part is at fault; ``detail`` says what is wrong (with that part)."""

    def __init__(self, detail: str, position: int | None = None, key: str | None = None) -> None:
        super().__init__(detail if position is None else f"part {position} ({key}) {detail}")
        self.detail = detail
        self.position = position
        self.key = key


class StorageTokenInvalid(StorageError):
    """A local download token whose signature or content does not check out."""


class StorageTokenExpired(StorageTokenInvalid):
    """A genuine local download token used after its expiry."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid storage key, else raise ``ValueError`` saying why.

    A key is non-empty, at most 1024 UTF-8 bytes, has no leading ``/``, backslash or
    NUL, and none of its ``/``-separated segments is empty, ``.``, ``..``, longer than
    255 bytes or starts with the reserved temp-file prefix. These rules make every key
    a path that stays under the local root and means the same object on S3.
    """
    _check_text(key, "key")
    if not key:
        raise ValueError("storage key is empty")
    for segment in key.split("/"):
        if segment == "..":
            raise ValueError("storage key contains a '..' segment")
        if segment == ".":
            raise ValueError("storage key contains a '.' segment")
        if segment == "":
            raise ValueError("storage key contains an empty segment ('//' or a trailing '/')")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise ValueError(f"storage key segment is longer than {MAX_SEGMENT_BYTES} bytes")
        if segment.startswith(TMP_PREFIX):
            raise ValueError(f"storage key segment starts with the reserved prefix {TMP_PREFIX!r}")
    return key


def _validate_prefix(prefix: str) -> str:
    """A list prefix may be empty or end with '/', but must not escape the root either."""
    _check_text(prefix, "prefix")
    if ".." in prefix.split("/"):
        raise ValueError("storage prefix contains a '..' segment")
    return prefix


def _check_text(value: str, what: str) -> None:
    """The rules keys and prefixes share: a str, no NUL, backslash or leading '/', and at
    most ``MAX_KEY_BYTES`` of UTF-8."""
    if not isinstance(value, str):
        raise ValueError(f"storage {what} must be a str, not {type(value).__name__}")
    for bad, name in (("\x00", "a NUL character"), ("\\", "a backslash")):
        if bad in value:
            raise ValueError(f"storage {what} contains {name}")
    if value.startswith("/"):
        raise ValueError(f"storage {what} starts with '/'")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"storage {what} is not encodable as UTF-8") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise ValueError(f"storage {what} is longer than {MAX_KEY_BYTES} bytes")


def _validate_filename(filename: str) -> str:
    """Download names end up in a Content-Disposition header: no paths, no control chars."""
    if not isinstance(filename, str) or not filename:
        raise ValueError("download filename must be a non-empty str")
    if len(filename) > 255:
        raise ValueError("download filename is longer than 255 characters")
    if any(ch in "/\\" or ord(ch) < 32 or ord(ch) == 127 for ch in filename):
        raise ValueError("download filename contains a path separator or a control character")
    return filename


def _validate_expiry(expires_in: int) -> int:
    if not isinstance(expires_in, int) or not MIN_EXPIRY_SECONDS <= expires_in <= MAX_EXPIRY_SECONDS:
        raise ValueError(
            f"expires_in must be an int between {MIN_EXPIRY_SECONDS} and {MAX_EXPIRY_SECONDS} seconds"
        )
    return expires_in


def content_disposition(filename: str) -> str:
    """An ``attachment`` Content-Disposition value for ``filename`` (RFC 6266).

    Non-ASCII names get an ASCII fallback plus ``filename*`` so every browser shows a
    sensible name; this matches what ``send_file`` emits for the local backend.
    """
    _validate_filename(filename)
    try:
        filename.encode("ascii")
    except UnicodeEncodeError:
        simple = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode("ascii")
        quoted = quote(filename, safe="!#$&+-.^_`|~")
        return f'attachment; filename="{_quote_header(simple)}"; filename*=UTF-8\'\'{quoted}'
    return f'attachment; filename="{_quote_header(filename)}"'


def _quote_header(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def guess_content_type(name: str) -> str:
    """The MIME type for a key or file name, ``application/octet-stream`` when unknown."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def s3_etag(md5s: Sequence[str]) -> str:
    """The ETag S3 gives an object made of parts with these MD5s (hex): the MD5 itself for
    one part, else the MD5 of the part MD5s and the part count."""
    if len(md5s) == 1:
        return md5s[0]
    return hashlib.md5(b"".join(bytes.fromhex(m) for m in md5s)).hexdigest() + f"-{len(md5s)}"


def _etag(value: str) -> str:
    return value.strip('"').lower()


class Part(NamedTuple):
    """One source of ``compose``: its key, and the length and MD5 (hex) it was stored with."""

    key: str
    size: int
    md5: str


@dataclass(frozen=True)
class Composed:
    """What ``compose`` made: the object's size, its S3-style ETag (``s3_etag`` of the part
    MD5s), its SHA-256 when the backend read the bytes (local), and how many incomplete
    multipart uploads of the destination an earlier attempt had left (S3)."""

    key: str
    size: int
    etag: str
    sha256: str | None = None
    aborted_uploads: int = 0


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object as ``list_info`` sees it. ``etag`` is S3's (the MD5 of an object
    stored by one PUT); the local backend keeps no checksum and says ``None``."""

    key: str
    size: int
    etag: str | None
    modified: datetime | None


@dataclass
class Traffic:
    """What a ``traffic()`` block exchanged with the store over the network: request and
    response bytes (headers included, retries included) and requests. ``measured`` is
    False where nothing goes over a network (local backend): the counts stay 0."""

    measured: bool
    sent: int = 0
    received: int = 0
    requests: int = 0


#: Called by ``compose`` as ``on_progress(parts_done)`` after each part, and on S3 once as
#: ``on_progress(0, upload_id)`` when its multipart upload exists. What it raises ends the
#: compose (the multipart upload is aborted) and reaches the caller unchanged.
Progress = Callable[..., None]


class Storage(ABC):
    """A flat key -> bytes store. Every method validates its keys first."""

    default_expiry: int
    #: Whether clients can store objects straight into the store (``presigned_put_url``),
    #: so that the store, not the application, is the record of what arrived.
    direct_uploads: bool = False

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str | None = None) -> None:
        """Store the file at ``path`` under ``key``, replacing any existing object."""

    @abstractmethod
    def put_stream(self, key: str, stream: IO[bytes], content_type: str | None = None) -> None:
        """Store everything read from the binary ``stream`` (to its end) under ``key``.

        The stream need not be seekable, and short reads are fine.
        """

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Store ``data`` under ``key``."""
        self.put_stream(key, io.BytesIO(data), content_type)

    @abstractmethod
    def put_part(self, key: str, body: IO[bytes], size: int, md5: str) -> None:
        """Store ``size`` bytes of ``body`` (seekable, at its start), whose MD5 the caller
        computed as ``md5`` (hex), as one object that ``compose`` can later use as a part.

        S3 checks the bytes on arrival (``Content-MD5``) and its ETag must be that MD5,
        else ``StorageUnavailable``; the local write is atomic and takes the caller's hash.
        """

    @abstractmethod
    def open(self, key: str) -> AbstractContextManager[IO[bytes]]:
        """Context manager yielding a readable binary stream of the object.

        Raises ``StorageKeyNotFound`` when the key is absent.
        """

    @abstractmethod
    def download_to_path(self, key: str, path: str | os.PathLike[str]) -> None:
        """Write the object to ``path`` (replaced whole, never left half-written)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting an absent key is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; how many there were.

        For a group of objects no one writes any more (a merged upload's chunks): the
        local backend also removes the prefix's directory once it is empty.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's length in bytes; ``StorageKeyNotFound`` when absent."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix`` (a plain string prefix, as on S3), sorted."""

    @abstractmethod
    def list_info(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """``list`` with each object's size, ETag and modification time, sorted by key."""

    @abstractmethod
    def compose(self, dest_key: str, parts: Sequence[Part], content_type: str | None = None,
                on_progress: Progress | None = None) -> Composed:
        """Store the concatenation of ``parts`` (in order) under ``dest_key``, verified.

        Every part must still be the bytes it was stored with (its size and MD5), and the
        result must be their concatenation (size and ``s3_etag``), else
        ``ComposeRejected`` and ``dest_key`` holds no unverified object. The parts are
        left in place for the caller to delete. S3 copies server-side (one
        ``UploadPartCopy`` per part: no part byte leaves S3; every part but the last
        must be at least 5 MiB) and first aborts any multipart upload of ``dest_key`` an
        earlier, killed attempt left; the local backend concatenates through a temp file.
        """

    @abstractmethod
    def abort_incomplete_uploads(self, older_than: datetime, keep: Collection[str] = (),
                                 prefix: str = "") -> int:
        """Abort the multipart uploads under ``prefix`` begun before ``older_than``, except
        those of a key in ``keep`` (in use); how many. The local backend has none: 0."""

    @abstractmethod
    def sweep_temporary(self, older_than: datetime, keep: Collection[str] = (), prefix: str = "") -> int:
        """Remove the temp files of writes killed midway under ``prefix``, last changed
        before ``older_than``, except beside a key in ``keep`` (a write of it may be under
        way); how many. S3 writes leave no temp objects (their leftovers are incomplete
        uploads, ``abort_incomplete_uploads``): 0."""

    @abstractmethod
    def traffic(self) -> AbstractContextManager[Traffic]:
        """Context manager counting what this thread exchanges with the store meanwhile."""

    @abstractmethod
    def presigned_get_url(self, key: str, expires_in: int | None = None, filename: str | None = None) -> str:
        """A URL anyone can GET the object from until it expires.

        ``expires_in`` defaults to ``PRESIGN_EXPIRY_SECONDS``; ``filename`` makes the
        response an attachment with that download name. The object need not exist yet.
        """

    @abstractmethod
    def presigned_put_url(self, key: str, expires_in: int | None = None) -> str | None:
        """A URL a client can PUT the object's bytes to (one request) until it expires, or
        ``None`` where the backend has none (``direct_uploads`` False): then the bytes
        must come through the API."""

    #: The base URL of the download links this backend mints when the API serves them
    #: itself (``app.api.storage``); None when the store serves its own links (S3).
    link_base_url: str | None = None

    def open_link(self, token: str) -> tuple[IO[bytes], str, str | None]:
        """The object a download link's token grants, opened for reading, with its key and
        download name; for backends whose links the API serves (``link_base_url``).

        ``StorageTokenExpired`` / ``StorageTokenInvalid`` for a bad token (always, where
        the API serves no links), ``StorageKeyNotFound`` when the object is gone.
        """
        raise StorageTokenInvalid("download links of this storage are served by the store, not the API")

    @abstractmethod
    def check(self) -> None:
        """Raise if the backend cannot be used (``/health``)."""

    def _expiry(self, expires_in: int | None) -> int:
        return _validate_expiry(self.default_expiry if expires_in is None else expires_in)


def _wall_clock() -> float:
    """The time source of token expiry; a module function so tests can move time."""
    return time.time()


class LocalStorage(Storage):
    """Objects as files under ``root``; download links are signed tokens served by the API.

    Writes go to a temp file in the target's directory, are fsynced, then renamed over
    the target with ``os.replace``: a reader sees the old object or the new one, never
    a partial one, even across a crash. ``content_type`` is not stored: downloads guess
    it from the download name or the key. A key cannot be both an object and a
    "directory" of other keys (``a`` and ``a/b``), unlike on S3.
    """

    def __init__(
        self,
        root: Path,
        signing_key: bytes,
        base_url: str,
        default_expiry: int,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.root = Path(root)
        self.base_url = self.link_base_url = base_url.rstrip("/")
        self.default_expiry = default_expiry
        self._clock = clock
        self._serializer = URLSafeSerializer(signing_key, salt=_TOKEN_SALT)

    # --- paths and atomic writes -------------------------------------------
    def path_for(self, key: str) -> Path:
        """The file that holds ``key`` (it may not exist)."""
        return self.root / validate_key(key)

    def _atomic_write(self, target: Path, write: Callable[[BinaryIO], None]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as tmp:
                write(tmp)
                tmp.flush()
                # Without the fsync a crash right after the rename can leave an empty file.
                os.fsync(tmp.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            raise

    # --- writes -------------------------------------------------------------
    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str | None = None) -> None:
        """Copy the file at ``path`` in, atomically."""
        target = self.path_for(key)
        with open(path, "rb") as src:
            self._atomic_write(target, lambda dst: shutil.copyfileobj(src, dst, _COPY_CHUNK))

    def put_stream(self, key: str, stream: IO[bytes], content_type: str | None = None) -> None:
        """Copy ``stream`` in, atomically."""
        target = self.path_for(key)
        self._atomic_write(target, lambda dst: shutil.copyfileobj(stream, dst, _COPY_CHUNK))

    def put_part(self, key: str, body: IO[bytes], size: int, md5: str) -> None:
        """``put_stream``: the write is atomic, and the caller hashed the bytes it hands in."""
        self.put_stream(key, body)

    def compose(self, dest_key: str, parts: Sequence[Part], content_type: str | None = None,
                on_progress: Progress | None = None) -> Composed:
        """Stream the parts, checking each, into a temp file next to the destination and
        rename it; then read the result back and compare its SHA-256 with what was read."""
        validate_key(dest_key)
        parts = _check_parts(parts)
        reader = _VerifyingReader(self, parts, on_progress)
        try:
            # The reader checks each part as it passes its end, the last one included,
            # before put_stream sees the end of the stream: a bad part leaves no object.
            self.put_stream(dest_key, cast(IO[bytes], reader), content_type)
        finally:
            reader.close()
        read = reader.sha256.hexdigest()
        check, size = hashlib.sha256(), 0
        with self.open(dest_key) as f:
            while block := f.read(_COPY_CHUNK):
                check.update(block)
                size += len(block)
        expected = sum(p.size for p in parts)
        if len(reader.md5s) != len(parts) or size != expected or check.hexdigest() != read:
            self.delete(dest_key)
            raise ComposeRejected(f"composed object does not verify: {size} bytes (expected {expected}), "
                                  f"SHA-256 {check.hexdigest()} (read {read})")
        return Composed(dest_key, size, s3_etag(reader.md5s), read)

    def presigned_put_url(self, key: str, expires_in: int | None = None) -> None:
        """None: clients send the bytes through the API, which stores them."""
        validate_key(key)
        self._expiry(expires_in)
        return None

    # --- reads --------------------------------------------------------------
    @contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        """Yield the object's file opened for binary reading."""
        path = self.path_for(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StorageKeyNotFound(key) from None
        with f:
            yield f

    def download_to_path(self, key: str, path: str | os.PathLike[str]) -> None:
        """Copy the object to ``path`` through a temp file in the destination directory."""
        dest = Path(path)
        with self.open(key) as src:
            self._atomic_write(dest, lambda dst: shutil.copyfileobj(src, dst, _COPY_CHUNK))

    def delete(self, key: str) -> None:
        """Unlink the file; absent is fine. Emptied directories are kept, since removing
        them would race with a concurrent write into the same directory."""
        try:
            self.path_for(key).unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass

    def exists(self, key: str) -> bool:
        """Whether a regular file holds the key."""
        return self.path_for(key).is_file()

    def size(self, key: str) -> int:
        """The file's size."""
        path = self.path_for(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise StorageKeyNotFound(key) from None
        if not path.is_file():
            raise StorageKeyNotFound(key)
        return st.st_size

    def list(self, prefix: str = "") -> list[str]:
        """Walk only the directory the prefix points into, skipping in-progress temp files."""
        return sorted(key for key, _ in self._walk(prefix))

    def list_info(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """``list`` plus each file's size and mtime (no checksum is kept: ``etag`` None)."""
        found = []
        for key, path in self._walk(prefix):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # deleted meanwhile
            found.append(ObjectInfo(key, st.st_size, None, datetime.fromtimestamp(st.st_mtime, UTC)))
        return sorted(found, key=lambda o: o.key)

    def _walk(self, prefix: str) -> Iterator[tuple[str, Path]]:
        _validate_prefix(prefix)
        base = prefix.rpartition("/")[0]
        start = self.root / base if base else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            rel_prefix = "" if rel == "." else rel + "/"
            # Prune subtrees that can hold no key with this prefix.
            dirnames[:] = [
                d for d in dirnames
                if (rel_prefix + d + "/").startswith(prefix) or prefix.startswith(rel_prefix + d + "/")
            ]
            for name in filenames:
                key = rel_prefix + name
                if not name.startswith(TMP_PREFIX) and key.startswith(prefix):
                    yield key, Path(dirpath) / name

    def delete_prefix(self, prefix: str) -> int:
        """Unlink each file, then the prefix's directory if that left it empty (a stray
        temp file keeps it)."""
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        if prefix.endswith("/") and prefix.strip("/"):
            try:
                os.rmdir(self.path_for(prefix.rstrip("/")))
            except OSError:
                pass
        return len(keys)

    def abort_incomplete_uploads(self, older_than: datetime, keep: Collection[str] = (),
                                 prefix: str = "") -> int:
        """No multipart uploads here: 0."""
        _validate_prefix(prefix)
        return 0

    def sweep_temporary(self, older_than: datetime, keep: Collection[str] = (), prefix: str = "") -> int:
        """Remove ``.tmp-`` files under the prefix's directory (``prefix`` is ``""`` or ends
        with ``/``) older than ``older_than``, skipping the directories of ``keep``'s keys."""
        _validate_prefix(prefix)
        if prefix and not prefix.endswith("/"):
            raise ValueError("sweep_temporary takes a directory prefix: empty or ending with '/'")
        start = self.root / prefix if prefix else self.root
        if not start.is_dir():
            return 0
        protected = {self.path_for(k).parent for k in keep}
        limit, removed = older_than.timestamp(), 0
        for dirpath, _dirs, names in os.walk(start):
            if Path(dirpath) in protected:
                continue
            for name in names:
                path = Path(dirpath) / name
                try:
                    if name.startswith(TMP_PREFIX) and path.stat().st_mtime < limit:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    @contextmanager
    def traffic(self) -> Iterator[Traffic]:
        """Nothing goes over a network: ``measured`` False."""
        yield Traffic(measured=False)

    # --- download links -----------------------------------------------------
    def _now(self) -> float:
        return (self._clock or _wall_clock)()

    def presigned_get_url(self, key: str, expires_in: int | None = None, filename: str | None = None) -> str:
        """``{base_url}/storage/download/<token>``, served by ``app.api.storage``.

        The token is signed, not encrypted: the key and download name are readable in
        the URL, as they are in an S3 presigned URL.
        """
        validate_key(key)
        payload: dict[str, Any] = {"k": key, "e": math.ceil(self._now()) + self._expiry(expires_in)}
        if filename is not None:
            payload["f"] = _validate_filename(filename)
        token = self._serializer.dumps(payload)
        return f"{self.base_url}/storage/download/{token}"

    def verify_download_token(self, token: str) -> tuple[str, str | None]:
        """The ``(key, filename)`` a token grants; ``StorageTokenExpired`` once it has
        expired, ``StorageTokenInvalid`` when it was not signed with this key."""
        try:
            payload = self._serializer.loads(token)
        except BadSignature:
            raise StorageTokenInvalid("download token signature does not match") from None
        if not isinstance(payload, dict):
            raise StorageTokenInvalid("download token payload is malformed")
        key, expires_at, filename = payload.get("k"), payload.get("e"), payload.get("f")
        if (
            not isinstance(key, str)
            or not isinstance(expires_at, int)
            or not (filename is None or isinstance(filename, str))
        ):
            raise StorageTokenInvalid("download token payload is malformed")
        try:
            validate_key(key)
        except ValueError:
            raise StorageTokenInvalid("download token names an invalid key") from None
        if self._now() >= expires_at:
            raise StorageTokenExpired("download link has expired")
        return key, filename

    def open_link(self, token: str) -> tuple[IO[bytes], str, str | None]:
        """Verify the token, then open the file it names."""
        key, filename = self.verify_download_token(token)
        try:
            return open(self.path_for(key), "rb"), key, filename
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StorageKeyNotFound(key) from None

    def check(self) -> None:
        """Create the root if needed and prove it writable with a probe file."""
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=TMP_PREFIX + "check-", dir=self.root):
            pass


def _check_parts(parts: Sequence[Part]) -> Sequence[Part]:
    if isinstance(parts, (str, Part)):
        raise ValueError("parts must be a sequence of Part")
    if not parts:
        raise ValueError("compose needs at least one part")
    for part in parts:
        if not isinstance(part, Part):
            raise ValueError(f"compose parts must be Part, not {type(part).__name__}")
        validate_key(part.key)
        if not isinstance(part.size, int) or part.size < 0:
            raise ValueError(f"part {part.key!r} has a negative or non-integer size")
    return parts


class _VerifyingReader(io.RawIOBase):
    """Reads the parts in order through ``storage.open``, checking each one's size and MD5
    as it passes its end, and hashing the whole (SHA-256) on the way."""

    def __init__(self, storage: Storage, parts: Sequence[Part], on_progress: Progress | None) -> None:
        super().__init__()
        self._storage = storage
        self._parts = list(parts)
        self._on_progress = on_progress
        self._pos = -1
        self._cm: AbstractContextManager[IO[bytes]] | None = None
        self._f: IO[bytes] | None = None
        self._md5 = hashlib.md5()
        self._got = 0
        self.md5s: list[str] = []
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def _finish_part(self) -> None:
        assert self._cm is not None
        self._cm.__exit__(None, None, None)
        self._cm = self._f = None
        part, digest = self._parts[self._pos], self._md5.hexdigest()
        if self._got != part.size or digest != part.md5:
            raise ComposeRejected(f"changed since it was checked ({self._got} bytes, MD5 {digest}; "
                                  f"expected {part.size}, {part.md5})", self._pos, part.key)
        self.md5s.append(digest)
        if self._on_progress is not None:
            self._on_progress(self._pos + 1)

    def _next(self) -> bool:
        if self._cm is not None:
            self._finish_part()
        self._pos += 1
        if self._pos >= len(self._parts):
            return False
        part = self._parts[self._pos]
        cm = self._storage.open(part.key)
        try:
            self._f = cm.__enter__()
        except StorageKeyNotFound:
            raise ComposeRejected("is missing from storage", self._pos, part.key) from None
        self._cm = cm
        self._md5, self._got = hashlib.md5(), 0
        return True

    def read(self, size: int = -1) -> bytes:
        while True:
            if self._f is None and not self._next():
                return b""
            assert self._f is not None
            data = self._f.read(size if size and size > 0 else _COPY_CHUNK)
            if data:
                self._md5.update(data)
                self.sha256.update(data)
                self._got += len(data)
                return data
            if not self._next():
                return b""

    def close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = self._f = None
        super().close()


class _FullReads:
    """Wraps a stream so that ``read(n)`` returns exactly ``n`` bytes until the end.

    s3transfer cuts each multipart part of a non-seekable upload with one ``read(n)``,
    so a stream that returns short reads (a pipe, a socket, an HTTP body) would produce
    parts under S3's 5 MiB minimum. Deliberately has no ``seek``: s3transfer must take
    its non-seekable path.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self._stream.read()
        chunks: list[bytes] = []
        got = 0
        while got < size:
            data = self._stream.read(min(size - got, 8 * _COPY_CHUNK))
            if not data:
                break
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)


def make_s3_client(settings: Settings) -> BaseClient:
    """A boto3 S3 client for the settings: endpoint (MinIO, moto), region, credentials,
    timeouts and standard retries."""
    options: dict[str, Any] = {
        "connect_timeout": settings.s3_timeout,
        "read_timeout": settings.s3_timeout,
        "retries": {"max_attempts": 3, "mode": "standard"},
        "signature_version": "s3v4",
    }
    if settings.s3_endpoint_url:
        # S3-compatible servers on a host:port have no per-bucket DNS names, and many
        # reject the CRC checksums botocore sends by default since 1.36.
        options["s3"] = {"addressing_style": "path"}
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    kwargs: dict[str, Any] = {"region_name": settings.s3_region, "config": Config(**options)}
    if settings.s3_endpoint_url:
        kwargs["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_access_key_id:
        kwargs["aws_access_key_id"] = settings.s3_access_key_id
        kwargs["aws_secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
    # A session of its own: boto3's default session is not safe to share across threads.
    return boto3.session.Session().client("s3", **kwargs)


def _is_not_found(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    if error.get("Code") == "NoSuchBucket":
        return False  # a configuration error, not a missing object
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.get("Code") in ("404", "NoSuchKey", "NotFound") or status == 404


#: Error codes S3 answers for a moment of overload or trouble on its side.
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                    "Throttling", "ThrottlingException", "OperationAborted"}


def _client_error(exc: ClientError, what: str, key: str | None) -> StorageError:
    """The storage error an S3 error answer means."""
    if key is not None and _is_not_found(exc):
        return StorageKeyNotFound(key)
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    message = f"{what}: {code or status} {error.get('Message', '')}".strip()
    if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
        return StorageUnavailable(message)
    return StorageRefused(message)


@contextmanager
def _s3_errors(what: str, key: str | None = None) -> Iterator[None]:
    """Turn boto3's exceptions into the storage errors: an absent ``key`` into
    ``StorageKeyNotFound``; timeouts, lost connections, 5xx and throttling into
    ``StorageUnavailable``; any other refusal into ``StorageRefused``."""
    try:
        yield
    except ClientError as exc:
        raise _client_error(exc, what, key) from exc
    except S3UploadFailedError as exc:  # s3transfer's wrapping of a ClientError
        cause = exc.__context__
        if isinstance(cause, ClientError):
            raise _client_error(cause, what, key) from exc
        raise StorageRefused(f"{what}: {exc}") from exc
    except BotoCoreError as exc:
        # The network or the client's setup (credentials from an unreachable metadata
        # service), not the request: worth another try.
        raise StorageUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


class _S3Meter:
    """Counts the bytes an S3 client sends and receives in this thread into the
    ``Traffic`` records active there (nested ones all count).

    Hooks botocore's ``before-send`` (request line, headers, body length) and
    ``before-parse`` (status line, headers, body; a streaming body is wrapped so bytes
    are counted as they are read) events. Every HTTP attempt is counted, retries
    included, so this is the traffic on the wire, not a model of it.
    """

    _active = threading.local()

    @classmethod
    def install(cls, client: BaseClient) -> None:
        events = client.meta.events
        # unique_id makes registration idempotent on a shared client.
        events.register("before-send.s3", cls._on_request, unique_id="storage-meter-send")
        events.register("before-parse.s3", cls._on_response, unique_id="storage-meter-recv")

    @classmethod
    @contextmanager
    def counting(cls) -> Iterator[Traffic]:
        stack = getattr(cls._active, "stack", None)
        if stack is None:
            stack = cls._active.stack = []
        traffic = Traffic(measured=True)
        stack.append(traffic)
        try:
            yield traffic
        finally:
            stack.remove(traffic)

    @classmethod
    def current(cls) -> list[Traffic]:
        return list(getattr(cls._active, "stack", None) or ())

    @staticmethod
    def _header_bytes(headers: Any) -> int:
        return sum(len(str(k)) + len(str(v)) + 4 for k, v in headers.items()) + 2

    @classmethod
    def _on_request(cls, request: Any, **_kwargs: Any) -> None:
        records = cls.current()
        if not records:
            return None
        body = request.body
        if isinstance(body, (bytes, bytearray)):
            length = len(body)
        elif isinstance(body, str):
            length = len(body.encode())
        else:
            length = int(request.headers.get("Content-Length") or 0)
        n = len(request.method) + len(request.url) + 12 + cls._header_bytes(request.headers) + length
        for t in records:
            t.sent += n
            t.requests += 1
        return None

    @classmethod
    def _on_response(cls, response_dict: dict[str, Any], **_kwargs: Any) -> None:
        records = cls.current()
        if not records:
            return
        n = 17 + cls._header_bytes(response_dict.get("headers") or {})
        body = response_dict.get("body")
        if isinstance(body, (bytes, bytearray)):
            n += len(body)
        elif body is not None:
            response_dict["body"] = _CountingBody(body, records)
        for t in records:
            t.received += n


class _CountingBody(io.RawIOBase):
    """A streaming response body that adds what is read from it to the traffic records."""

    def __init__(self, body: Any, records: list[Traffic]) -> None:
        super().__init__()
        self._body = body
        self._records = records

    def readable(self) -> bool:
        return True

    def read(self, amt: int | None = None) -> bytes:
        data = self._body.read(amt) if amt is not None and amt >= 0 else self._body.read()
        for t in self._records:
            t.received += len(data)
        return bytes(data)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def iter_chunks(self, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        while True:
            data = self.read(chunk_size)
            if not data:
                return
            yield data

    def close(self) -> None:
        self._body.close()
        super().close()


class S3Storage(Storage):
    """Objects in one S3 bucket (AWS, MinIO, moto) through a boto3 client."""

    direct_uploads = True

    def __init__(
        self,
        bucket: str,
        client: BaseClient,
        default_expiry: int = 3600,
        transfer_config: TransferConfig | None = None,
    ) -> None:
        self.bucket = bucket
        self.client = client
        self.default_expiry = default_expiry
        self.transfer_config = transfer_config or S3_TRANSFER_CONFIG

    def _extra(self, content_type: str | None) -> dict[str, str] | None:
        return {"ContentType": content_type} if content_type else None

    # --- writes -------------------------------------------------------------
    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str | None = None) -> None:
        """``upload_file``: multipart with parallel parts above 8 MiB."""
        validate_key(key)
        if not Path(path).is_file():
            raise FileNotFoundError(str(path))
        with _s3_errors(f"store {key}"):
            self.client.upload_file(
                os.fspath(path), self.bucket, key, ExtraArgs=self._extra(content_type), Config=self.transfer_config
            )

    def put_stream(self, key: str, stream: IO[bytes], content_type: str | None = None) -> None:
        """``upload_fileobj``; non-seekable streams go through a reader that fills every
        read so multipart parts reach S3's minimum size."""
        validate_key(key)
        seekable = getattr(stream, "seekable", None)
        source: Any = stream if callable(seekable) and seekable() else _FullReads(stream)
        with _s3_errors(f"store {key}"):
            self.client.upload_fileobj(
                source, self.bucket, key, ExtraArgs=self._extra(content_type), Config=self.transfer_config
            )

    def put_part(self, key: str, body: IO[bytes], size: int, md5: str) -> None:
        """One ``PutObject`` with ``Content-MD5``: S3 checks the bytes on arrival, and the
        ETag it answers is the MD5 ``compose`` later compares every part copy against."""
        validate_key(key)
        with _s3_errors(f"store {key}"):
            result = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentLength=size,
                ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode("ascii"),
            )
        if _etag(result.get("ETag", "")) != md5:
            raise StorageUnavailable(f"object storage stored {key} with ETag {result.get('ETag')}, not its MD5")

    # --- compose --------------------------------------------------------------
    def compose(self, dest_key: str, parts: Sequence[Part], content_type: str | None = None,
                on_progress: Progress | None = None) -> Composed:
        """One part: ``CopyObject``. Several: a multipart upload with one ``UploadPartCopy``
        per part. Each copy must report the part's recorded MD5, so a part replaced since
        it was recorded is caught; the result's size and ETag are checked with a HEAD. On
        any error the multipart upload is aborted; one a killed process left is aborted
        by the next compose of the same key (or by ``abort_incomplete_uploads``)."""
        validate_key(dest_key)
        parts = _check_parts(parts)
        for position, part in enumerate(parts):
            if part.size > S3_MAX_COPY_BYTES:
                raise ComposeRejected("exceeds S3's 5 GiB copy limit", position, part.key)
            if part.size < S3_MIN_PART_BYTES and position < len(parts) - 1:
                raise ComposeRejected(f"is {part.size} bytes, under S3's 5 MiB part minimum", position, part.key)
        # A crashed attempt may have left its multipart upload behind: abort it first,
        # so exactly one upload of this key exists and nothing orphaned is billed.
        aborted = self._abort_uploads(dest_key, lambda upload: upload["Key"] == dest_key)
        if aborted:
            logger.info("aborted stale multipart uploads", extra={"key": dest_key, "count": aborted})
        extra = self._extra(content_type) or {}
        if len(parts) == 1:
            self._copy_one(dest_key, parts[0], extra)
            if on_progress is not None:
                on_progress(1)
        else:
            self._copy_parts(dest_key, parts, extra, on_progress)
        size, etag = self._verify_composed(dest_key, parts)
        return Composed(dest_key, size, etag, None, aborted)

    def _copy_one(self, dest_key: str, part: Part, extra: dict[str, str]) -> None:
        with _part_errors(0, part):
            result = self.client.copy_object(
                Bucket=self.bucket, Key=dest_key, CopySource={"Bucket": self.bucket, "Key": part.key},
                MetadataDirective="REPLACE", **extra)
        etag = _etag(result["CopyObjectResult"]["ETag"])
        if etag != part.md5:
            self.delete(dest_key)
            raise ComposeRejected(f"changed since it was checked (MD5 {etag}, expected {part.md5})", 0, part.key)

    def _copy_parts(self, dest_key: str, parts: Sequence[Part], extra: dict[str, str],
                    on_progress: Progress | None) -> None:
        with _s3_errors(f"create multipart upload of {dest_key}"):
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=dest_key, **extra)["UploadId"]
        try:
            if on_progress is not None:
                on_progress(0, upload_id)
            done = []
            for number, part in enumerate(parts, start=1):
                with _part_errors(number - 1, part):
                    result = self.client.upload_part_copy(
                        Bucket=self.bucket, Key=dest_key, UploadId=upload_id, PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": part.key})
                etag = _etag(result["CopyPartResult"]["ETag"])
                if etag != part.md5:
                    raise ComposeRejected(f"changed since it was checked (MD5 {etag}, expected {part.md5})",
                                          number - 1, part.key)
                done.append({"ETag": result["CopyPartResult"]["ETag"], "PartNumber": number})
                if on_progress is not None:
                    on_progress(number)
            with _s3_errors(f"complete multipart upload of {dest_key}"):
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=dest_key, UploadId=upload_id, MultipartUpload={"Parts": done})
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=dest_key, UploadId=upload_id)
            except Exception:
                logger.warning("could not abort multipart upload", extra={"key": dest_key, "upload_id": upload_id},
                               exc_info=True)
            raise

    def _verify_composed(self, dest_key: str, parts: Sequence[Part]) -> tuple[int, str]:
        head = self._head(dest_key)
        expected_size, expected = sum(p.size for p in parts), s3_etag([p.md5 for p in parts])
        size, etag = (int(head["ContentLength"]), _etag(head["ETag"])) if head else (0, "")
        if size != expected_size or etag != expected:
            self.delete(dest_key)
            raise ComposeRejected(f"composed object does not verify: {size} bytes with ETag {etag}, "
                                  f"expected {expected_size} bytes with ETag {expected}")
        return size, etag

    # --- incomplete uploads ---------------------------------------------------
    def _abort_uploads(self, prefix: str, chosen: Callable[[dict[str, Any]], bool]) -> int:
        """Abort the incomplete multipart uploads under ``prefix`` that ``chosen`` picks."""
        aborted = 0
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            with _s3_errors("list multipart uploads"):
                page = self.client.list_multipart_uploads(**args)
            for upload in page.get("Uploads", ()):
                if not chosen(upload):
                    continue
                with _s3_errors(f"abort multipart upload of {upload['Key']}"):
                    try:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        aborted += 1
                    except self.client.exceptions.NoSuchUpload:
                        pass  # completed or aborted meanwhile
            if not page.get("IsTruncated"):
                return aborted
            args.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))

    def abort_incomplete_uploads(self, older_than: datetime, keep: Collection[str] = (),
                                 prefix: str = "") -> int:
        """Every page of ``ListMultipartUploads``; ``AbortMultipartUpload`` of the old ones."""
        _validate_prefix(prefix)
        kept = set(keep)
        return self._abort_uploads(prefix, lambda u: u["Key"] not in kept and u["Initiated"] < older_than)

    def sweep_temporary(self, older_than: datetime, keep: Collection[str] = (), prefix: str = "") -> int:
        """S3 writes leave no temp objects: 0."""
        _validate_prefix(prefix)
        return 0

    @contextmanager
    def traffic(self) -> Iterator[Traffic]:
        """Counts this client's HTTP requests and responses in this thread (``_S3Meter``)."""
        _S3Meter.install(self.client)
        with _S3Meter.counting() as traffic:
            yield traffic

    # --- reads --------------------------------------------------------------
    def _body(self, key: str) -> IO[bytes]:
        with _s3_errors(f"read {key}", key):
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]

    @contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        """Yield the ``get_object`` body, a streaming file-like object; closed on exit."""
        validate_key(key)
        body = self._body(key)
        try:
            yield body
        finally:
            body.close()

    def download_to_path(self, key: str, path: str | os.PathLike[str]) -> None:
        """``download_file`` (it writes a temp file beside ``path`` and renames it)."""
        validate_key(key)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with _s3_errors(f"read {key}", key):
            self.client.download_file(self.bucket, key, os.fspath(path), Config=self.transfer_config)

    def delete(self, key: str) -> None:
        """``delete_object``, which S3 already treats as idempotent."""
        validate_key(key)
        with _s3_errors(f"delete {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        """``DeleteObjects`` of the listed keys, 1,000 a request."""
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            with _s3_errors(f"delete objects under {prefix}"):
                result = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            errors = result.get("Errors") or []
            if errors:
                raise StorageUnavailable(f"could not delete {len(errors)} objects under {prefix}: {errors[0]}")
        return len(keys)

    def _head(self, key: str) -> dict[str, Any] | None:
        validate_key(key)
        try:
            with _s3_errors(f"head {key}", key):
                return self.client.head_object(Bucket=self.bucket, Key=key)
        except StorageKeyNotFound:
            return None

    def exists(self, key: str) -> bool:
        """``head_object`` answers 200."""
        return self._head(key) is not None

    def size(self, key: str) -> int:
        """``ContentLength`` of ``head_object``."""
        head = self._head(key)
        if head is None:
            raise StorageKeyNotFound(key)
        return int(head["ContentLength"])

    def list(self, prefix: str = "") -> list[str]:
        """Every page of ``list_objects_v2``."""
        return [info.key for info in self.list_info(prefix)]

    def list_info(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """Every page of ``list_objects_v2``, with ``Size``, ``ETag`` and ``LastModified``."""
        _validate_prefix(prefix)
        found: builtins.list[ObjectInfo] = []
        with _s3_errors(f"list {prefix!r}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                found.extend(ObjectInfo(obj["Key"], int(obj["Size"]), _etag(obj.get("ETag", "")),
                                        obj.get("LastModified")) for obj in page.get("Contents", ()))
        return sorted(found, key=lambda o: o.key)

    def presigned_get_url(self, key: str, expires_in: int | None = None, filename: str | None = None) -> str:
        """A SigV4 ``get_object`` URL, with the Content-Disposition S3 should answer with."""
        validate_key(key)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename is not None:
            params["ResponseContentDisposition"] = content_disposition(filename)
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self._expiry(expires_in))

    def presigned_put_url(self, key: str, expires_in: int | None = None) -> str:
        """A SigV4 ``put_object`` URL (one PUT, no multipart)."""
        validate_key(key)
        return self.client.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self._expiry(expires_in)
        )

    # --- bucket -------------------------------------------------------------
    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (first start against MinIO, tests)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if not _is_not_found(exc):
                raise
        args: dict[str, Any] = {"Bucket": self.bucket}
        region = self.client.meta.region_name
        if region and region != "us-east-1":
            # us-east-1 is the one region that rejects an explicit LocationConstraint.
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**args)
            logger.info("created bucket %s", self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise

    def check(self) -> None:
        """``head_bucket``: reachable, credentials accepted, bucket present."""
        with _s3_errors(f"head bucket {self.bucket}"):
            self.client.head_bucket(Bucket=self.bucket)


@contextmanager
def _part_errors(position: int, part: Part) -> Iterator[None]:
    """``_s3_errors`` for a copy of one part, where a missing source is the part's fault."""
    try:
        with _s3_errors(f"copy part {position}", part.key):
            yield
    except StorageKeyNotFound:
        raise ComposeRejected("is missing from storage", position, part.key) from None


_clients: dict[tuple[Any, ...], BaseClient] = {}
_clients_lock = threading.Lock()


def _shared_s3_client(settings: Settings) -> BaseClient:
    """One client per configuration and process: building one costs tens of ms, and
    clients are thread-safe but must not cross a fork (their sockets would be shared)."""
    cache_key = (
        os.getpid(),
        settings.s3_endpoint_url,
        settings.s3_region,
        settings.s3_access_key_id,
        settings.s3_secret_access_key.get_secret_value(),
        settings.s3_timeout,
    )
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            client = _clients[cache_key] = make_s3_client(settings)
        return client


def get_storage(settings: Settings) -> Storage:
    """The storage backend ``settings`` select."""
    if settings.storage_backend == "s3":
        return S3Storage(
            settings.s3_bucket, _shared_s3_client(settings), default_expiry=settings.presign_expiry_seconds
        )
    return LocalStorage(
        root=settings.storage_local_root,
        signing_key=settings.signing_key(),
        base_url=settings.base_url,
        default_expiry=settings.presign_expiry_seconds,
    )
