"""Run one program in a throw-away, locked-down Docker container, and always remove it.

Each URL scan runs the fetcher image (``fetcher/``) through ``run_fetch``. The container:

* has a memory limit with swap equal to it (no swap), a CPU quota, a pids limit;
* has a read-only root file system and only a small ``noexec`` tmpfs on ``/tmp``;
* drops every capability, sets ``no-new-privileges`` and runs as user 65534 (nobody);
* joins the configured network only (``none`` for no network);
* carries the labels ``app.scan=1`` and ``app.scan.job=<id>`` so strays (a worker killed
  mid-scan runs no ``finally``) are found and removed by the recovery sweep.

The wait is bounded: on timeout the container is killed and the outcome is ``timeout``;
an OOM kill is ``oom``; a non-zero exit is ``exit`` with the stderr tail; output that is
not one JSON object is ``invalid_output``. The container is removed in every case.

Docker's SDK raises ``requests.exceptions.ConnectionError`` (not a timeout error) when a
wait times out, so a failed wait is told apart from a lost daemon by asking Docker
whether the container still runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from app.settings import ROOT, Settings

logger = logging.getLogger(__name__)

#: Every scan container carries this label (value "1"); the sweep and the tests look for it.
LABEL = "app.scan"
JOB_LABEL = "app.scan.job"
FETCHER_DIR = ROOT / "fetcher"
FETCHER_REPO = "app-fetcher"
#: The most stdout a fetcher may print; more is treated as invalid output.
MAX_OUTPUT_BYTES = 4 * 1024 * 1024
STDERR_TAIL_CHARS = 2000
#: Exit status of a process killed by SIGKILL (128 + 9).
SIGKILL_EXIT = 137
MIB = 1024 * 1024
_DOCKER_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")


class SandboxUnavailable(Exception):
    """Docker could not be reached, or could not start the container: worth another try."""


class SandboxConfigError(Exception):
    """The container cannot run as configured (no such image or network): not worth a retry."""


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and fetch options of one scan container (from settings)."""

    image: str
    network: str = "bridge"
    memory_bytes: int = 512 * MIB
    cpus: float = 0.5
    pids_limit: int = 64
    tmpfs_bytes: int = 16 * MIB
    timeout: float = 30.0
    user: str = "65534:65534"
    allow_cidrs: tuple[str, ...] = ()
    max_bytes: int = 5 * MIB
    max_redirects: int = 5
    fetch_max_time: float = 20.0
    connect_timeout: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxConfig:
        """The config the ``SCAN_*`` settings describe (the image tag derived when unset)."""
        return cls(
            image=settings.scan_fetcher_image or fetcher_image_tag(),
            network=settings.scan_network,
            memory_bytes=settings.scan_memory_mb * MIB,
            cpus=settings.scan_cpus,
            pids_limit=settings.scan_pids_limit,
            tmpfs_bytes=settings.scan_tmpfs_mb * MIB,
            timeout=settings.scan_timeout,
            allow_cidrs=tuple(c.strip() for c in settings.scan_allow_cidrs.split(",") if c.strip()),
            max_bytes=settings.scan_max_bytes,
            max_redirects=settings.scan_max_redirects,
            fetch_max_time=settings.scan_fetch_max_time,
            connect_timeout=settings.scan_connect_timeout,
        )

    def fetch_args(self, url: str) -> list[str]:
        """The fetcher's command line for ``url`` (the image's entrypoint runs it)."""
        args = [
            "--max-bytes", str(self.max_bytes),
            "--max-redirects", str(self.max_redirects),
            "--max-time", f"{self.fetch_max_time:g}",
            "--connect-timeout", f"{self.connect_timeout:g}",
        ]
        for cidr in self.allow_cidrs:
            args += ["--allow", cidr]
        # "--" so that a URL can never be read as an option.
        return [*args, "--", url]


@dataclass
class SandboxOutcome:
    """How a container run ended and what it printed."""

    kind: str  # ok | timeout | oom | exit | invalid_output
    container_id: str
    seconds: float
    exit_code: int | None = None
    document: dict[str, Any] | None = None
    stderr_tail: str = ""
    message: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def fetcher_image_tag(directory: Path = FETCHER_DIR, repo: str = FETCHER_REPO) -> str:
    """``app-fetcher:<12 hex>``: a hash of ``fetcher/``'s files, as scripts/build-fetcher makes it.

    One line ``<sha256>  ./<path>`` per file, sorted by path, hashed again; so the worker
    finds the image built from the very code it ships, and a change rebuilds it.
    """
    lines = []
    files = sorted(
        p for p in directory.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    for path in sorted(files, key=lambda p: ("./" + p.relative_to(directory).as_posix()).encode()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  ./{path.relative_to(directory).as_posix()}\n")
    return f"{repo}:{hashlib.sha256(''.join(lines).encode()).hexdigest()[:12]}"


def docker_client(settings: Settings) -> docker.DockerClient:
    """A Docker client with the configured address and a timeout on every call."""
    try:
        if settings.docker_url:
            return docker.DockerClient(base_url=settings.docker_url, timeout=int(max(1, settings.docker_timeout)))
        return docker.from_env(timeout=int(max(1, settings.docker_timeout)))
    except DockerException as exc:
        raise SandboxUnavailable(f"Docker is not reachable: {exc}") from None


def container_kwargs(cfg: SandboxConfig, command: list[str], labels: dict[str, str],
                     entrypoint: list[str] | None = None) -> dict[str, Any]:
    """The hardened ``containers.create`` arguments (kept in one place, checked by tests)."""
    kwargs: dict[str, Any] = {
        "image": cfg.image,
        "command": command,
        "detach": True,
        "labels": {LABEL: "1", **labels},
        "mem_limit": cfg.memory_bytes,
        "memswap_limit": cfg.memory_bytes,  # swap equal to memory: no swap at all
        "nano_cpus": int(cfg.cpus * 1e9),
        "pids_limit": cfg.pids_limit,
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,noexec,nosuid,nodev,size={cfg.tmpfs_bytes}"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "user": cfg.user,
        "ipc_mode": "none",
        "stdin_open": False,
        "tty": False,
        "log_config": {"type": "json-file", "config": {"max-size": "8m", "max-file": "1"}},
    }
    if cfg.network == "none":
        kwargs["network_mode"] = "none"
    else:
        kwargs["network"] = cfg.network
    if entrypoint is not None:
        kwargs["entrypoint"] = entrypoint
    return kwargs


def run_fetch(client: docker.DockerClient, cfg: SandboxConfig, url: str, job_id: str,
              on_started: Callable[[str], None] | None = None) -> SandboxOutcome:
    """Run the fetcher on ``url`` for scan ``job_id``; see the module docstring."""
    return run_container(client, cfg, cfg.fetch_args(url), {JOB_LABEL: job_id}, on_started=on_started)


def run_container(client: docker.DockerClient, cfg: SandboxConfig, command: list[str], labels: dict[str, str],
                  entrypoint: list[str] | None = None,
                  on_started: Callable[[str], None] | None = None) -> SandboxOutcome:
    """Create, start and wait for one hardened container; remove it whatever happens."""
    kwargs = container_kwargs(cfg, command, labels, entrypoint)
    started = time.monotonic()
    try:
        container = client.containers.create(**kwargs)
    except ImageNotFound:
        raise SandboxConfigError(
            f"the fetcher image {cfg.image} does not exist on this Docker host (build it: scripts/build-fetcher)"
        ) from None
    except NotFound as exc:
        raise SandboxConfigError(f"cannot create the container: {exc.explanation or exc}") from None
    except (APIError, DockerException, requests.exceptions.RequestException) as exc:
        raise SandboxUnavailable(f"cannot create the container: {exc}") from None
    try:
        try:
            container.start()
        except NotFound as exc:
            raise SandboxConfigError(f"cannot start the container: {exc.explanation or exc}") from None
        except (APIError, DockerException, requests.exceptions.RequestException) as exc:
            raise SandboxUnavailable(f"cannot start the container: {exc}") from None
        started = time.monotonic()
        if on_started is not None:
            on_started(container.id)
        timed_out = _wait(container, cfg.timeout)
        seconds = time.monotonic() - started
        if timed_out:
            logger.info("scan container timed out; killed", extra={"container": container.short_id,
                                                                    "timeout": cfg.timeout})
            return SandboxOutcome("timeout", container.id, seconds, stderr_tail=_stderr_tail(container),
                                  message=f"the fetch ran longer than {cfg.timeout:g} s; the container was killed",
                                  labels=kwargs["labels"])
        return _outcome(container, cfg, seconds, kwargs["labels"])
    finally:
        _remove(container)


def _wait(container: Any, timeout: float) -> bool:
    """Wait for the container to stop; True when it had to be killed at the timeout."""
    try:
        container.wait(timeout=timeout)
        return False
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        # docker-py reports a wait timeout as ConnectionError; a lost daemon looks the
        # same, so ask Docker whether the container still runs.
        try:
            container.reload()
        except (APIError, DockerException, requests.exceptions.RequestException):
            raise SandboxUnavailable(f"Docker stopped answering while the fetch ran: {exc}") from None
        if container.status != "running":
            return False
        try:
            container.kill()
        except NotFound:
            pass
        except APIError as kill_exc:  # it may have exited in between
            if "is not running" not in str(kill_exc):
                raise SandboxUnavailable(f"cannot kill the timed-out container: {kill_exc}") from None
        except (DockerException, requests.exceptions.RequestException) as kill_exc:
            # The daemon went away between the reload and the kill (a restarting dockerd):
            # the scan goes back to the queue, not to FAILED as an unexpected error.
            raise SandboxUnavailable(f"Docker stopped answering while the fetch ran: {kill_exc}") from None
        return True


def _outcome(container: Any, cfg: SandboxConfig, seconds: float, labels: dict[str, str]) -> SandboxOutcome:
    try:
        container.reload()
        state = container.attrs.get("State", {})
        stdout = container.logs(stdout=True, stderr=False)
    except (APIError, DockerException, requests.exceptions.RequestException) as exc:
        raise SandboxUnavailable(f"cannot read the container's result: {exc}") from None
    code = state.get("ExitCode")
    # stderr matters only when something went wrong: one Docker call saved per good scan.
    stderr = _stderr_tail(container) if code != 0 else ""
    # Docker misses some OOM kills (on cgroup v1 about one in eight here: neither the
    # OOMKilled flag nor an "oom" event). A SIGKILL (exit 137) that we did not send can
    # only come from the kernel's OOM killer: nothing inside a container without
    # capabilities can send it, and the timeout path above is ours.
    if state.get("OOMKilled") or code == SIGKILL_EXIT:
        if not state.get("OOMKilled"):
            logger.info("exit 137 without Docker's OOM flag: taken as the memory limit",
                        extra={"container": container.short_id})
        return SandboxOutcome("oom", container.id, seconds, code, stderr_tail=stderr, labels=labels,
                              message=f"memory limit exceeded ({cfg.memory_bytes // MIB} MiB)")
    if code != 0:
        return SandboxOutcome("exit", container.id, seconds, code, stderr_tail=stderr, labels=labels,
                              message=f"the fetcher exited with status {code}: {stderr or '(no output on stderr)'}")
    if len(stdout) > MAX_OUTPUT_BYTES:
        return SandboxOutcome("invalid_output", container.id, seconds, code, stderr_tail=stderr, labels=labels,
                              message=f"the fetcher printed {len(stdout):,} bytes, more than {MAX_OUTPUT_BYTES:,}")
    try:
        document = json.loads(stdout.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        stderr = _stderr_tail(container)
        excerpt = stdout[:200].decode("utf-8", errors="replace")
        return SandboxOutcome("invalid_output", container.id, seconds, code, stderr_tail=stderr, labels=labels,
                              message=f"the fetcher's output is not valid JSON ({exc}): {excerpt!r}")
    if not isinstance(document, dict):
        return SandboxOutcome("invalid_output", container.id, seconds, code, stderr_tail=stderr, labels=labels,
                              message=f"the fetcher's output is JSON but not an object: {type(document).__name__}")
    return SandboxOutcome("ok", container.id, seconds, code, document=document, stderr_tail=stderr, labels=labels)


def _stderr_tail(container: Any) -> str:
    try:
        raw = container.logs(stdout=False, stderr=True, tail=40)
    except (APIError, DockerException, requests.exceptions.RequestException):
        return ""
    return raw.decode("utf-8", errors="replace").strip()[-STDERR_TAIL_CHARS:]


def _remove(container: Any) -> None:
    try:
        container.remove(force=True, v=True)
    except NotFound:
        pass
    except (APIError, DockerException, requests.exceptions.RequestException) as exc:
        # The sweep removes labelled strays later; the scan's outcome stands.
        logger.warning("could not remove scan container", extra={"container": container.short_id,
                                                                 "error": str(exc)[:200]})


def list_scan_containers(client: docker.DockerClient) -> list[Any]:
    """Every container carrying the scan label, running or not."""
    return client.containers.list(all=True, filters={"label": f"{LABEL}=1"}, ignore_removed=True)


def remove_stale_containers(client: docker.DockerClient, older_than: float,
                            now: datetime | None = None) -> list[str]:
    """Remove labelled containers created more than ``older_than`` seconds ago; their ids."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=older_than)
    removed = []
    for container in list_scan_containers(client):
        created = _parse_docker_time(container.attrs.get("Created", ""))
        if created is None or created > cutoff:
            continue
        try:
            container.remove(force=True, v=True)
            removed.append(container.id)
            logger.info("removed stray scan container", extra={
                "container": container.short_id, "job": container.labels.get(JOB_LABEL)})
        except NotFound:
            pass
    return removed


def _parse_docker_time(value: str) -> datetime | None:
    """Docker's RFC 3339 timestamps carry nanoseconds, which ``fromisoformat`` refuses."""
    match = _DOCKER_TIME.match(value or "")
    if not match:
        return None
    head, frac, tz = match.groups()
    text = head + (f".{frac[:6].ljust(6, '0')}" if frac else "") + ("+00:00" if tz in (None, "Z") else tz)
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return None


def image_present(client: docker.DockerClient, image: str) -> bool:
    """Whether ``image`` exists on the Docker host (never pulled: no registry is assumed)."""
    try:
        client.images.get(image)
        return True
    except ImageNotFound:
        return False
