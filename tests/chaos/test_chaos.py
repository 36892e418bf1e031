"""Chaos: a mixed load through the real API and real workers on every queue while worker
processes are SIGKILLed, the broker is stopped for 20 s, PostgreSQL restarts and
``dockerd`` restarts during scans. Afterwards every accepted item is in a terminal state,
no side effect happened twice, and nothing is left stuck once the sweepers have run.

The suite brings its own Redis and PostgreSQL (``tests/chaos/services.py``), so breaking
them disturbs nobody; only Docker is the machine's own. The figures of the last run are
in docs/reliability.md (``CHAOS_WRITE_DOCS=1`` rewrites them; see ``tests/chaos/report.py``).
"""

from __future__ import annotations

import io
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

import docker
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from bench.common import deploy_env
from tests.chaos import report
from tests.chaos.load import Client, Item, build_mix, submit
from tests.chaos.outcomes import FAMILIES, ContainerCounter, all_terminal, outbox_trail, tally
from tests.chaos.services import (
    ROOT,
    PrivatePostgres,
    PrivateRedis,
    Stack,
    docker_answers,
    make_workdir,
    pg_bindir,
    restart_dockerd,
    start_dockerd,
    wait_until,
)
from tests.conftest import need
from tests.scans_support import TEST_LABEL, docker_client, fetcher_image, scan_sites  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.timeout(900)]

#: The load: at least 500 submissions in all.
COUNTS = {"messages": 335, "voice": 60, "ocr": 30, "scans": 45, "files": 40}
VOICE_CLIPS = 4
LOAD_SECONDS = 95.0
KILL_EVERY = (3.0, 6.0)
KILL_MAIN_SHARE = 0.25
BROKER_DOWN_AT, BROKER_DOWN_FOR = 12.0, 20.0
PG_RESTART_AT, PG_DOWN_FOR = 45.0, 8.0
DOCKER_RESTART_AT = 62.0
DRAIN_DEADLINE = 300.0
CONCURRENCY = {"messages": 2, "outbox": 2, "voice": 1, "ocr": 1, "scans": 2, "files": 1}

#: Timings shortened so that recovery happens within the run; each keeps the relation
#: the settings validate (visibility timeout above every hard time limit, scan stale
#: time above the container timeout).
TIMINGS = {
    "OUTBOX_RELAY_INTERVAL": "1",
    "BROKER_VISIBILITY_TIMEOUT": "80",
    "TASK_TIME_LIMIT": "70",
    "TASK_SOFT_TIME_LIMIT": "60",
    "OCR_TASK_TIME_LIMIT": "70",
    "SCAN_TIMEOUT": "6",
    "DOCKER_TIMEOUT": "3",
    "SCAN_STALE_SECONDS": "20",
    "SCAN_SWEEP_INTERVAL": "5",
    "VOICE_LEASE_SECONDS": "20",
    "VOICE_SWEEP_INTERVAL": "5",
    "FILES_MERGE_LEASE_SECONDS": "15",
    "CHANNEL_TIMEOUT": "5",
    "MESSAGE_RETRY_BACKOFF": "1",
    "REDIS_SOCKET_TIMEOUT": "3",
    # Above the longest queue wait of this load; a slow task re-published is a no-op run.
    "OUTBOX_REDELIVER_AFTER": "60",
}


def _ocr_image() -> bytes:
    """The top of a rendered scorecard: real OCR work, about a second of Tesseract."""
    from tests.ocr_fixtures import FIXTURES, missing_fonts, page_images

    need(not missing_fonts(["clean-dejavu-sans"]), "the OCR fixture fonts")
    image = page_images(FIXTURES["clean-dejavu-sans"])[0]
    buf = io.BytesIO()
    image.crop((0, 0, image.size[0], 900)).save(buf, "PNG")
    return buf.getvalue()


def _clips() -> list[bytes]:
    from app.dev.voice_clips import ClipStyle, synthesize_wav, tools_available

    need(tools_available(), "espeak-ng and sox")
    texts = ["This is your bank. Read me the code we sent to your phone right now.",
             "Hi, it is Maria from the dental office, see you on Thursday."]
    return [synthesize_wav(texts[n % 2], ClipStyle(seed=n)) for n in range(VOICE_CLIPS)]


@pytest.fixture
def private_services() -> Iterator[tuple[PrivateRedis, PrivatePostgres, Path]]:
    need(shutil.which("redis-server") is not None, "redis-server")
    need(pg_bindir() is not None and shutil.which("runuser") is not None and os.geteuid() == 0,
         "PostgreSQL's initdb/pg_ctl (run as root through runuser)")
    need(shutil.which("dockerd") is not None, "dockerd")
    workdir = make_workdir()
    redis = PrivateRedis(workdir)
    pg = PrivatePostgres(workdir)
    try:
        redis.start()
        pg.init()
        pg.start()
        pg.create_database()
        yield redis, pg, workdir
    finally:
        pg.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _migrate(env: dict[str, str]) -> None:
    code = "from app.migrate import upgrade; upgrade()"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120,
                   capture_output=True)


def _api_key(db_url: str) -> str:
    from app.services.auth import create_api_key

    engine = create_engine(db_url)
    with Session(engine) as session:
        _, token = create_api_key(session, "chaos")
        session.commit()
    engine.dispose()
    return token


def _restart_sites(client: Any) -> None:
    for container in client.containers.list(all=True, filters={"label": TEST_LABEL}):
        if container.status != "running":
            container.start()


def test_mixed_load_survives_chaos(private_services, channel_server, scan_sites, docker_client,
                                   tmp_root) -> None:  # type: ignore[no-untyped-def]
    from app.services.sandbox import JOB_LABEL, LABEL, list_scan_containers
    from app.settings import QUEUES

    redis, pg, workdir = private_services
    started = time.monotonic()
    run = f"chaos{secrets.token_hex(3)}"
    seed = int(os.environ.get("CHAOS_SEED", "11"))
    storage_root = workdir / "storage"
    # CHAOS_LOGS keeps the processes' logs after the session (tmp_root goes with it).
    logs = Path(os.environ.get("CHAOS_LOGS") or tmp_root) / f"chaos-{run}"
    logs.mkdir(parents=True)
    env = dict(os.environ) | {
        "DATABASE_URL": pg.url, "REDIS_URL": redis.url, "BROKER_URL": "", "RESULT_BACKEND": "",
        "STORAGE_BACKEND": "local", "STORAGE_LOCAL_ROOT": str(storage_root), "LOG_JSON": "true",
        "LOG_LEVEL": "INFO", "HF_HUB_OFFLINE": "1", "VOICE_ASR_THREADS": "1",
        "METRICS_DIR": str(workdir / "metrics"), "SCAN_NETWORK": scan_sites.network,
        # The sites get new addresses on the internal network when Docker restarts them.
        "SCAN_ALLOW_CIDRS": scan_sites.subnet,
    } | channel_server.env | TIMINGS
    _migrate(env)
    token = _api_key(pg.url)
    ocr_image, clips = _ocr_image(), _clips()

    # The voice worker reserves as many messages as deployed, so its backlogs are scored in
    # batches (app.tasks.batching) under the kills and outages too.
    stack = Stack(env=env, logs=logs, queues=QUEUES, concurrency=CONCURRENCY,
                  prefetch={"voice": deploy_env("voice")["WORKER_PREFETCH_MULTIPLIER"]})
    counter = ContainerCounter(lambda: docker.from_env(timeout=30), LABEL, JOB_LABEL)
    timeline: dict[str, float] = {}
    try:
        stack.start()
        stack.wait_ready()
        counter.start()
        items = build_mix(COUNTS, run=run, site_base=scan_sites.base, ocr_image=ocr_image, clips=clips, seed=7)
        client = Client(stack.base_url, token)

        load_start = time.monotonic()
        load_started_utc = time.strftime("%H:%M:%S", time.gmtime())
        stack.supervise()
        # CHAOS_SEED varies which processes die when (a failing run names its seed).
        stack.kill_randomly(KILL_EVERY, KILL_MAIN_SHARE, seed=seed, started=load_start,
                            until=load_start + LOAD_SECONDS)

        def chaos() -> None:
            def at(t: float) -> None:
                time.sleep(max(0.0, load_start + t - time.monotonic()))

            at(BROKER_DOWN_AT)
            timeline["broker_stopped_at"] = time.monotonic() - load_start
            down = time.monotonic()
            redis.stop()
            at(BROKER_DOWN_AT + BROKER_DOWN_FOR)
            redis.start()
            timeline["broker_down_seconds"] = time.monotonic() - down
            at(PG_RESTART_AT)
            timeline["pg_stopped_at"] = time.monotonic() - load_start
            t0 = time.monotonic()
            pg.restart(PG_DOWN_FOR)
            timeline["pg_restart_seconds"] = time.monotonic() - t0
            at(DOCKER_RESTART_AT)
            timeline["docker_stopped_at"] = time.monotonic() - load_start
            timeline["docker_down_seconds"] = restart_dockerd()
            _restart_sites(docker_client)

        chaos_thread = threading.Thread(target=chaos, name="chaos-timeline", daemon=True)
        chaos_thread.start()

        def paced(index_item: tuple[int, Item]) -> None:
            index, item = index_item
            time.sleep(max(0.0, load_start + index * LOAD_SECONDS / len(items) - time.monotonic()))
            submit(client, item)

        with ThreadPoolExecutor(max_workers=12, thread_name_prefix="chaos-client") as pool:
            list(pool.map(paced, enumerate(items)))
        chaos_thread.join(timeout=300)
        assert not chaos_thread.is_alive(), "the chaos timeline did not finish"
        load_seconds = time.monotonic() - load_start

        # Drain: every accepted item terminal (beat keeps the relay and the sweepers running).
        drain_start = time.monotonic()
        engine = create_engine(pg.url, pool_pre_ping=True)
        drained = wait_until(lambda: all_terminal(engine, items), DRAIN_DEADLINE, interval=2.0)
        # The scan sweep removes containers a restart of Docker orphaned.
        wait_until(lambda: not list_scan_containers(docker_client), 60, interval=2.0)
        drain_seconds = time.monotonic() - drain_start
        # The queues without load still serve after the chaos.
        probes = _probe_idle_queues(redis.url)
        counter.stop()

        families = tally(engine, items, deliveries=channel_server.received(), storage_root=storage_root,
                         worker_logs={q: [stack.worker_log(q)] for q in QUEUES},
                         container_creates=counter.creates, run=run)
        lost_ids = [i.id for i in items if i.accepted and i.id
                    and any(i.id in x for x in families[i.family].lost_ids)]
        trail = outbox_trail(engine, lost_ids) if lost_ids else []
        engine.dispose()
        leftovers = len(list_scan_containers(docker_client))
        kills = {"child": sum(k.kind == "child" for k in stack.kills), "main": sum(k.kind == "main" for k in stack.kills)}
        summary = {
            "date": date.today().isoformat(),
            "machine": f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
            "run": run,
            "seed": seed,
            "load_started_utc": load_started_utc,
            "queues": list(QUEUES),
            "wall_seconds": time.monotonic() - started,
            "load_seconds": load_seconds,
            "drain_seconds": drain_seconds,
            "drained": drained,
            "chaos": {"kills": kills, "kill_every": list(KILL_EVERY), **timeline,
                      "kill_log": [asdict(k) for k in stack.kills],
                      "restarts": {n: w.restarts for n, w in stack.workers.items()}},
            "families": {f: _row(families[f]) for f in FAMILIES},
            "extra": {
                "api_retries": client.transient_errors,
                "double_accepted": sum(families[f].double_accepted for f in FAMILIES),
                "orphans": sum(families[f].orphans for f in FAMILIES),
                "leftover_containers": leftovers,
                "probes": probes,
                "redelivered": _redelivered(stack.worker_log("outbox")),
            },
        }
        print("\n" + report.section(summary))
        if os.environ.get("CHAOS_SUMMARY"):
            Path(os.environ["CHAOS_SUMMARY"]).write_text(json.dumps(summary, indent=2, default=str))
        total_lost = sum(t.lost for t in families.values())
        total_dups = sum(t.duplicates for t in families.values())
        accepted = sum(t.accepted for t in families.values())
        if os.environ.get("CHAOS_WRITE_DOCS") == "1" and total_lost == 0 and total_dups == 0:
            report.write_docs(summary)

        details = {f: {"lost": t.lost_ids[:10], "duplicates": t.duplicate_ids[:10]} for f, t in families.items()}
        details["outbox"] = trail[:20]  # type: ignore[assignment]
        details["kills"] = [asdict(k) for k in stack.kills]  # type: ignore[assignment]
        details["unacked"] = _unacked(redis.url)  # type: ignore[assignment]
        details["timeline"] = timeline  # type: ignore[assignment]
        details["seed"] = seed  # type: ignore[assignment]
        assert sum(t.submitted for t in families.values()) >= 500
        assert accepted == sum(t.submitted for t in families.values()), \
            f"the API never accepted some submissions: {[(i.ref, i.error) for i in items if not i.accepted][:10]}"
        assert total_lost == 0, f"lost items: {json.dumps(details, indent=1, default=str)}"
        assert total_dups == 0, f"duplicate side effects: {json.dumps(details, indent=1, default=str)}"
        assert leftovers == 0, "scan containers left behind"
        assert all(probes.values()), f"queues not served after the chaos: {probes}"
        assert kills["child"] + kills["main"] >= LOAD_SECONDS / KILL_EVERY[1] - 2
    finally:
        counter.stop()
        stack.stop()
        if not docker_answers():  # never leave the machine without its Docker engine
            start_dockerd()


def _row(t: Any) -> dict[str, Any]:
    return {k: getattr(t, k) for k in ("submitted", "accepted", "completed", "failed", "duplicates", "lost",
                                        "double_accepted", "orphans", "lost_ids", "duplicate_ids")} | {
        "reasons": dict(t.reasons)}


def _redelivered(log: Path) -> int:
    """Outbox events the relay published again because no worker took them."""
    total = 0
    for line in log.read_text(errors="replace").splitlines():
        if "never taken by a worker" in line and line.startswith("{"):
            try:
                total += int(json.loads(line).get("count", 0))
            except (json.JSONDecodeError, ValueError):
                pass
    return total


def _unacked(redis_url: str) -> list[dict[str, Any]]:
    """Broker messages delivered but never acknowledged, with their age (diagnostics)."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url)
    out = []
    now = time.time()
    for tag, score in client.zrange("unacked_index", 0, -1, withscores=True):
        raw = client.hget("unacked", tag)
        if raw:
            message = json.loads(raw)[0]
            headers = message.get("headers") or {}
            out.append({"task": headers.get("task"), "id": headers.get("id"), "age": round(now - score),
                        "queue": json.loads(raw)[2]})
    out.append({"mutex_ttl": client.ttl("unacked_mutex")})
    client.close()
    return out


def _probe_idle_queues(redis_url: str) -> dict[str, bool]:
    """A real task on ``default`` and ``gc`` (no load of their own) answers after the chaos."""
    from tests.fixtures.workers import celery_client

    app = celery_client(redis_url)
    app.conf.result_backend = redis_url
    results = {"default": app.send_task("app.tasks.system.ping"),
               "gc": app.send_task("app.tasks.gc.collect_uploads")}
    out = {}
    for queue, result in results.items():
        try:
            result.get(timeout=60)
            out[queue] = True
        except Exception:
            out[queue] = False
    return out
