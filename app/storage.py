"""Object storage: one ``Storage`` interface, a local-directory backend and an S3 backend.

Tasks and views store blobs (uploads, scans, audio, results) by key and never touch the
filesystem or boto3 directly, so a deployment moves from one machine's disk to MinIO or
AWS S3 by changing ``STORAGE_BACKEND`` alone. Both backends behave the same for every
operation below (the tests run one suite against both); where they cannot, the
difference is written in the method's docstring.

Keys are ``/``-separated, S3-style (``scans/2024/abc.pdf``); ``validate_key`` states the
rules, which keep every key a safe relative path under the local root.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
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
    if not isinstance(key, str):
        raise ValueError(f"storage key must be a str, not {type(key).__name__}")
    if not key:
        raise ValueError("storage key is empty")
    if "\x00" in key:
        raise ValueError("storage key contains a NUL character")
    if "\\" in key:
        raise ValueError("storage key contains a backslash")
    if key.startswith("/"):
        raise ValueError("storage key starts with '/'")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("storage key is not encodable as UTF-8") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise ValueError(f"storage key is longer than {MAX_KEY_BYTES} bytes")
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
    if not isinstance(prefix, str):
        raise ValueError(f"storage prefix must be a str, not {type(prefix).__name__}")
    if "\x00" in prefix or "\\" in prefix or prefix.startswith("/"):
        raise ValueError("storage prefix contains a NUL, a backslash or a leading '/'")
    if ".." in prefix.split("/"):
        raise ValueError("storage prefix contains a '..' segment")
    try:
        encoded = prefix.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("storage prefix is not encodable as UTF-8") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise ValueError(f"storage prefix is longer than {MAX_KEY_BYTES} bytes")
    return prefix


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


class Storage(ABC):
    """A flat key -> bytes store. Every method validates its keys first."""

    default_expiry: int

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
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's length in bytes; ``StorageKeyNotFound`` when absent."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix`` (a plain string prefix, as on S3), sorted."""

    @abstractmethod
    def compose(self, dest_key: str, part_keys: Sequence[str], content_type: str | None = None) -> None:
        """Store the concatenation of ``part_keys`` (in order) under ``dest_key``.

        The parts are left in place; the caller deletes them once it no longer needs
        them. ``dest_key`` may be one of the parts. A missing part raises
        ``StorageKeyNotFound`` and leaves ``dest_key`` untouched.
        """

    @abstractmethod
    def presigned_get_url(self, key: str, expires_in: int | None = None, filename: str | None = None) -> str:
        """A URL anyone can GET the object from until it expires.

        ``expires_in`` defaults to ``PRESIGN_EXPIRY_SECONDS``; ``filename`` makes the
        response an attachment with that download name. The object need not exist yet.
        """

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
        self.base_url = base_url.rstrip("/")
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

    def compose(self, dest_key: str, part_keys: Sequence[str], content_type: str | None = None) -> None:
        """Stream the parts into a temp file next to the destination, then rename it."""
        target = self.path_for(dest_key)
        paths = [self.path_for(k) for k in _check_parts(part_keys)]

        def write(dst: BinaryIO) -> None:
            for key, path in zip(part_keys, paths, strict=True):
                try:
                    src = open(path, "rb")
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    raise StorageKeyNotFound(key) from None
                with src:
                    shutil.copyfileobj(src, dst, _COPY_CHUNK)

        self._atomic_write(target, write)

    # --- reads --------------------------------------------------------------
    @contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        """Yield the object's file opened for binary reading."""
        path = self.path_for(key)
        try:
            f = open(path, "rb")
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
        _validate_prefix(prefix)
        base = prefix.rpartition("/")[0]
        start = self.root / base if base else self.root
        if not start.is_dir():
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            rel_prefix = "" if rel == "." else rel + "/"
            # Prune subtrees that can hold no key with this prefix.
            dirnames[:] = [
                d for d in dirnames
                if (rel_prefix + d + "/").startswith(prefix) or prefix.startswith(rel_prefix + d + "/")
            ]
            for name in filenames:
                if name.startswith(TMP_PREFIX):
                    continue
                key = rel_prefix + name
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

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

    def check(self) -> None:
        """Create the root if needed and prove it writable with a probe file."""
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=TMP_PREFIX + "check-", dir=self.root):
            pass


def _check_parts(part_keys: Sequence[str]) -> Sequence[str]:
    if isinstance(part_keys, str):
        raise ValueError("part_keys must be a sequence of keys, not a str")
    if not part_keys:
        raise ValueError("compose needs at least one part")
    for key in part_keys:
        validate_key(key)
    return part_keys


class _SequentialReader:
    """Reads streams one after another; ``read(n)`` returns exactly ``n`` bytes until the end.

    s3transfer cuts each multipart part of a non-seekable upload with one ``read(n)``,
    so a stream that returns short reads (a pipe, a socket, an HTTP body) would produce
    parts under S3's 5 MiB minimum. Deliberately has no ``seek``: s3transfer must take
    its non-seekable path.
    """

    def __init__(self, openers: Sequence[Callable[[], IO[bytes]]], close_streams: bool) -> None:
        self._openers = list(openers)
        self._close_streams = close_streams
        self._current: IO[bytes] | None = None

    def _advance(self) -> bool:
        if self._current is not None and self._close_streams:
            self._current.close()
        self._current = None
        if not self._openers:
            return False
        self._current = self._openers.pop(0)()
        return True

    def read(self, size: int = -1) -> bytes:
        chunks: list[bytes] = []
        wanted = size if size is not None and size >= 0 else None
        got = 0
        while wanted is None or got < wanted:
            if self._current is None and not self._advance():
                break
            assert self._current is not None
            amount = _COPY_CHUNK if wanted is None else min(wanted - got, 8 * _COPY_CHUNK)
            data = self._current.read(amount)
            if not data:
                if not self._advance():
                    break
                continue
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)

    def close(self) -> None:
        if self._current is not None and self._close_streams:
            self._current.close()
        self._current = None
        self._openers.clear()


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


class S3Storage(Storage):
    """Objects in one S3 bucket (AWS, MinIO, moto) through a boto3 client."""

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
        self.client.upload_file(
            os.fspath(path), self.bucket, key, ExtraArgs=self._extra(content_type), Config=self.transfer_config
        )

    def put_stream(self, key: str, stream: IO[bytes], content_type: str | None = None) -> None:
        """``upload_fileobj``; non-seekable streams go through a reader that fills every
        read so multipart parts reach S3's minimum size."""
        validate_key(key)
        seekable = getattr(stream, "seekable", None)
        source: Any = stream if callable(seekable) and seekable() else _SequentialReader([lambda: stream], False)
        self.client.upload_fileobj(
            source, self.bucket, key, ExtraArgs=self._extra(content_type), Config=self.transfer_config
        )

    def compose(self, dest_key: str, part_keys: Sequence[str], content_type: str | None = None) -> None:
        """Concatenate server-side when S3 allows it, else by streaming the parts through.

        Server-side path: one non-empty part (up to 5 GiB) is a ``copy_object``; several
        become a multipart upload whose parts are ``upload_part_copy`` of each source
        (sources over 5 GiB are copied in ranges), so no byte leaves S3. S3 requires
        every part but the last to be at least 5 MiB, so this path is taken only when
        every non-last, non-empty part is that large (and 10,000 parts suffice).

        Copy path otherwise: the parts are read one after another with ``get_object``
        and re-uploaded by ``upload_fileobj`` as one stream, in bounded memory (a few
        8 MiB chunks, see ``S3_TRANSFER_CONFIG``) and without temp files.

        A failed multipart upload is aborted either way (s3transfer aborts its own), so
        no orphaned parts are billed; ``dest_key`` is only written on success.
        """
        validate_key(dest_key)
        _check_parts(part_keys)
        sizes = [self.size(k) for k in part_keys]  # StorageKeyNotFound before any write
        sources = [(k, s) for k, s in zip(part_keys, sizes, strict=True) if s > 0]
        extra = self._extra(content_type)

        if len(sources) == 1 and sources[0][1] <= S3_MAX_COPY_BYTES:
            if sources[0][0] == dest_key and not content_type:
                return  # already the result; S3 refuses a copy onto itself that changes nothing
            args: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": dest_key,
                "CopySource": {"Bucket": self.bucket, "Key": sources[0][0]},
            }
            if content_type:
                args.update(ContentType=content_type, MetadataDirective="REPLACE")
            self.client.copy_object(**args)
            return

        pieces = _copy_pieces(sources)
        if sources and all(s >= S3_MIN_PART_BYTES for _, s in sources[:-1]) and len(pieces) <= S3_MAX_PARTS:
            self._compose_server_side(dest_key, pieces, extra)
            return

        logger.debug("compose %s from %d parts by copy path", dest_key, len(part_keys))
        reader = _SequentialReader([self._body_opener(k) for k, _ in sources], True)
        try:
            self.client.upload_fileobj(reader, self.bucket, dest_key, ExtraArgs=extra, Config=self.transfer_config)
        finally:
            reader.close()

    def _body_opener(self, key: str) -> Callable[[], IO[bytes]]:
        def opener() -> IO[bytes]:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except ClientError as exc:
                if _is_not_found(exc):
                    raise StorageKeyNotFound(key) from None
                raise

        return opener

    def _compose_server_side(
        self, dest_key: str, pieces: Sequence[tuple[str, str | None]], extra: dict[str, str] | None
    ) -> None:
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=dest_key, **(extra or {}))["UploadId"]
        try:
            parts = []
            for number, (source, byte_range) in enumerate(pieces, start=1):
                args: dict[str, Any] = {
                    "Bucket": self.bucket,
                    "Key": dest_key,
                    "UploadId": upload_id,
                    "PartNumber": number,
                    "CopySource": {"Bucket": self.bucket, "Key": source},
                }
                if byte_range:
                    args["CopySourceRange"] = byte_range
                result = self.client.upload_part_copy(**args)
                parts.append({"ETag": result["CopyPartResult"]["ETag"], "PartNumber": number})
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=dest_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=dest_key, UploadId=upload_id)
            except Exception:
                logger.warning("could not abort multipart upload %s of %s", upload_id, dest_key, exc_info=True)
            raise

    # --- reads --------------------------------------------------------------
    @contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        """Yield the ``get_object`` body, a streaming file-like object; closed on exit."""
        validate_key(key)
        body = self._body_opener(key)()
        try:
            yield body
        finally:
            body.close()

    def download_to_path(self, key: str, path: str | os.PathLike[str]) -> None:
        """``download_file`` (it writes a temp file beside ``path`` and renames it)."""
        validate_key(key)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, key, os.fspath(path), Config=self.transfer_config)
        except ClientError as exc:
            if _is_not_found(exc):
                raise StorageKeyNotFound(key) from None
            raise

    def delete(self, key: str) -> None:
        """``delete_object``, which S3 already treats as idempotent."""
        validate_key(key)
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def _head(self, key: str) -> dict[str, Any] | None:
        validate_key(key)
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise

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
        _validate_prefix(prefix)
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", ()))
        return sorted(keys)

    def presigned_get_url(self, key: str, expires_in: int | None = None, filename: str | None = None) -> str:
        """A SigV4 ``get_object`` URL, with the Content-Disposition S3 should answer with."""
        validate_key(key)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename is not None:
            params["ResponseContentDisposition"] = content_disposition(filename)
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self._expiry(expires_in))

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
        self.client.head_bucket(Bucket=self.bucket)


def _copy_pieces(sources: Sequence[tuple[str, int]]) -> list[tuple[str, str | None]]:
    """(source key, CopySourceRange or None) per multipart part; sources over the 5 GiB
    copy limit are split into equal ranges, each far above the 5 MiB minimum."""
    pieces: list[tuple[str, str | None]] = []
    for key, size in sources:
        if size <= S3_MAX_COPY_BYTES:
            pieces.append((key, None))
            continue
        count = math.ceil(size / S3_MAX_COPY_BYTES)
        step = math.ceil(size / count)
        for start in range(0, size, step):
            pieces.append((key, f"bytes={start}-{min(start + step, size) - 1}"))
    return pieces


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
