"""Voice benchmark: clips scored per second by one worker process through the queue,
against the bare scoring function in one process, with and without speech recognition.

1. **Bare**: ``score_clip`` called in a loop in this process on the same clips, with the
   same models and thread settings as the worker (``deps_from_settings``: one BLAS,
   onnxruntime and ASR thread) — the baseline.
2. **Queue**: the same clips stored in (local) storage with their ``VoiceJob`` rows,
   one ``app.tasks.voice.score`` message each sent to the `voice` queue, consumed by one
   real ``celery worker`` pool process (prefork, concurrency 1, the deployed prefetch)
   that claims the rows, reads the clips, scores them and writes the results — in
   batches once a backlog has formed, as deployed (``VOICE_BATCH_MAX``,
   app.tasks.batching). Timed from the first send to the last ``finished_at`` the
   worker wrote (polled gently, so the poll takes no CPU from the worker). Target:
   ≥ 0.8× the bare rate.

Both run alternately ``--repeat`` times (paired ratios; median and spread), first with
the transcript provided (no recognition), then from audio alone (faster-whisper). Also
reported: the sentence encoder's time per clip (one thread), ONNX head inference and
acoustic feature time per clip, and the resident memory of the worker's pool process
once its models are loaded.

Everything runs on loopback: a private redis-server, a scratch PostgreSQL database.

    python -m bench.voice [--quick] [--clips 200] [--asr-clips 12] [--repeat 3] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASR_THREADS = "1"


def _configure(db_url: str, redis_url: str, storage: str) -> None:
    os.environ.update({"DATABASE_URL": db_url, "REDIS_URL": redis_url, "BROKER_URL": "", "RESULT_BACKEND": "",
                       "STORAGE_BACKEND": "local", "STORAGE_LOCAL_ROOT": storage, "LOG_LEVEL": "WARNING",
                       "VOICE_ASR_THREADS": ASR_THREADS, "HF_HUB_OFFLINE": "1", "SECRET_KEY": "bench"})


def make_clips(count: int) -> list[tuple[bytes, str]]:
    """Distinct synthesized calls from the corpus's validation split, with their transcripts."""
    from app.dev.voice_clips import HELDOUT_SPEEDS, HELDOUT_VOICES, style_for, synthesize_wav

    rows = [json.loads(line) for line in (ROOT / "data" / "voice" / "transcripts.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "val"][:count]
    return [(synthesize_wav(r["text"], style_for(i, HELDOUT_VOICES, HELDOUT_SPEEDS, 5)), r["text"])
            for i, r in enumerate(rows)]


def bare_rate(deps, clips: list[tuple[bytes, str]], n: int, with_asr: bool) -> float:  # type: ignore[no-untyped-def]
    from app.services.voice.model import score_clip

    start = time.perf_counter()
    for i in range(n):
        wav, text = clips[i % len(clips)]
        score_clip(deps, wav, None if with_asr else text)
    return n / (time.perf_counter() - start)


def queue_rate(clips: list[tuple[bytes, str]], n: int, with_asr: bool, round_no: int) -> float:
    from sqlalchemy import func, select

    from app.celery_app import celery_app
    from app.db import session_scope
    from app.models.base import utcnow
    from app.models.voice import VoiceJob
    from app.services.voice import jobs as voice_jobs
    from app.settings import get_settings
    from app.storage import get_storage

    storage = get_storage(get_settings())
    ids = []
    with session_scope() as session:
        for i in range(n):
            wav, text = clips[i % len(clips)]
            task_id = f"b{round_no:03d}{int(with_asr)}{i:05d}"
            key = voice_jobs.audio_key_for(task_id)
            storage.put_bytes(key, wav, content_type="audio/wav")
            # target "remote" adds no outbox event: the benchmark sends the messages itself.
            voice_jobs.create_job(session, task_id=task_id, target="remote", audio_key=key,
                                    transcript=None if with_asr else text)
            ids.append(task_id)
    started = utcnow()
    with celery_app.producer_or_acquire() as producer:
        for task_id in ids:
            celery_app.send_task("app.tasks.voice.score", kwargs={"task_id": task_id}, producer=producer)
    deadline = time.monotonic() + 60 + n * 10
    # The rows say when each clip was finished (finished_at, written by the worker), so the
    # poll can be slow and cheap: it takes no CPU from the worker being measured.
    while True:
        time.sleep(0.25)
        with session_scope() as session:
            done, failed, last = session.execute(
                select(func.count(), func.count().filter(VoiceJob.status == "failed"), func.max(VoiceJob.finished_at))
                .where(VoiceJob.id.in_(ids), VoiceJob.status.in_(("completed", "failed")))).one()
        if done == n:
            assert failed == 0, f"{failed} benchmark tasks failed"
            return n / (last - started).total_seconds()
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done}/{n} voice tasks finished in time")


def start_worker(log: Path) -> subprocess.Popen[bytes]:
    from app.celery_app import celery_app
    from bench.common import deploy_env

    node = f"bench-voice-{os.getpid()}@bench"
    # One pool process, with the prefetch the voice worker is deployed with.
    prefetch = deploy_env("voice")["WORKER_PREFETCH_MULTIPLIER"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "app", "worker", "-Q", "voice", "-n", node, "-P", "prefork", "-c", "1",
         "--prefetch-multiplier", prefetch, "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
        cwd=ROOT, env=dict(os.environ), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited {proc.returncode}; see {log}")
        if celery_app.control.ping(destination=[node], timeout=0.5):
            # One warm-up task so the pool process has loaded its models before timing.
            celery_app.send_task("app.tasks.system.ping", queue="voice").get(timeout=60)
            return proc
    raise RuntimeError(f"worker not ready; see {log}")


def micro(deps, clips: list[tuple[bytes, str]]) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    """Per-clip times of the pieces: decode, acoustic features, sentence encoder, ONNX head."""
    from app.services.voice.features import acoustic_features, decode_audio

    out: dict[str, list[float]] = {"decode": [], "acoustic_per_10s": [], "encoder": [], "onnx": []}
    for wav, text in clips:
        t0 = time.perf_counter()
        samples = decode_audio(wav, deps.limits)
        out["decode"].append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        acoustic_features(samples)
        out["acoustic_per_10s"].append((time.perf_counter() - t0) * 1000 * 10 / (samples.size / 16000))
        for _ in range(5):
            t0 = time.perf_counter()
            deps.model.embed(text)
            out["encoder"].append((time.perf_counter() - t0) * 1000)
        row = deps.model.row(samples, text)[None, :]
        for _ in range(20):
            t0 = time.perf_counter()
            deps.model.predict(row)
            out["onnx"].append((time.perf_counter() - t0) * 1000)
    return out


def pool_rss_mib(worker: subprocess.Popen[bytes]) -> float:
    """Resident memory of the worker's pool process (its child), models loaded."""
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    for line in Path(f"/proc/{children[0]}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS for the pool process")


def main() -> None:
    """Run both comparisons and print (optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--clips", type=int, default=200, help="clips per run with the transcript provided")
    parser.add_argument("--asr-clips", type=int, default=12, help="clips per run from audio alone")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write-docs", action="store_true", help="update the table in docs/voice.md")
    parser.add_argument("--summary", help="write the headline figures as JSON here (python -m bench)")
    args = parser.parse_args()
    if args.quick:
        args.clips, args.asr_clips, args.repeat = 40, 3, 2

    from app.devserver import start_private_redis
    from app.settings import get_settings
    from bench.common import (
        Figure,
        deploy_env,
        machine,
        median_spread,
        replace_section,
        scratch_database,
        stop,
        today,
        write_summary,
    )

    redis_proc, redis_url = start_private_redis()
    tmp = Path(tempfile.mkdtemp(prefix="bench-voice-"))
    results: dict[str, list[float]] = {"bare": [], "queue": [], "bare_asr": [], "queue_asr": []}
    try:
        with scratch_database(f"bench_voice_{os.getpid()}") as db_url:
            _configure(db_url, redis_url, str(tmp / "storage"))
            from app.migrate import upgrade

            upgrade()
            from app.celery_app import celery_app
            from app.services.voice.model import deps_from_settings

            celery_app.loader.import_default_modules()
            clips = make_clips(8)
            deps = deps_from_settings(get_settings())
            pieces = micro(deps, clips)
            worker = start_worker(tmp / "worker.log")
            try:
                rss = [pool_rss_mib(worker)]
                for r in range(args.repeat):
                    results["bare"].append(bare_rate(deps, clips, args.clips, with_asr=False))
                    results["queue"].append(queue_rate(clips, args.clips, with_asr=False, round_no=r))
                for r in range(args.repeat):
                    results["bare_asr"].append(bare_rate(deps, clips, args.asr_clips, with_asr=True))
                    results["queue_asr"].append(queue_rate(clips, args.asr_clips, with_asr=True, round_no=100 + r))
                rss.append(pool_rss_mib(worker))
            finally:
                stop([worker])
            from app.db import reset_engine

            reset_engine()
    finally:
        redis_proc.terminate()

    def row(label: str, values: list[float], unit: str, fmt: str = "{:.2f}") -> str:
        m, lo, hi = median_spread(values)
        return f"| {label} | {fmt.format(m)} {unit} | {fmt.format(lo)}–{fmt.format(hi)} | |"

    def ratio_row(label: str, num: str, den: str) -> tuple[str, float]:
        ratios = [a / b for a, b in zip(results[num], results[den])]
        m, lo, hi = median_spread(ratios)
        verdict = "met" if m >= 0.8 else "**missed**"
        return f"| {label} | **{m:.2f}×** | {lo:.2f}–{hi:.2f} | ≥ 0.8× ({verdict}) |", m

    r1, m1 = ratio_row("queue ÷ bare, transcript provided (paired)", "queue", "bare")
    r2, m2 = ratio_row("queue ÷ bare, from audio (paired)", "queue_asr", "bare_asr")
    table = "\n".join([
        f"Measured {today()} by `python -m bench.voice{' --quick' if args.quick else ''}` on {machine()}; "
        f"clips of 8–20 s synthesized from the corpus's validation split; speech recognition with {ASR_THREADS} thread(s) per process in both "
        f"paths; the worker as deployed: prefetch multiplier {deploy_env('voice')['WORKER_PREFETCH_MULTIPLIER']}, "
        f"batches of up to {get_settings().voice_batch_max} clips (`VOICE_BATCH_MAX`); {args.repeat} paired runs.",
        "",
        "| measurement | median | spread (min–max) | target |",
        "|---|---|---|---|",
        row(f"bare `score_clip`, transcript provided, {args.clips} clips", results["bare"], "clips/s"),
        row("queue, 1 worker process, transcript provided", results["queue"], "clips/s"),
        r1,
        row(f"bare `score_clip`, from audio (ASR), {args.asr_clips} clips", results["bare_asr"], "clips/s"),
        row("queue, 1 worker process, from audio (ASR)", results["queue_asr"], "clips/s"),
        r2,
        row("sentence encoder per clip (transcript, 1 thread)", pieces["encoder"], "ms"),
        row("ONNX head inference per clip", pieces["onnx"], "ms", "{:.3f}"),
        row("acoustic features per 10 s of audio", pieces["acoustic_per_10s"], "ms"),
        row("decode + resample per clip", pieces["decode"], "ms"),
        f"| worker pool process resident memory, models loaded (start / after the runs) | {rss[0]:.0f} MiB | "
        f"{rss[0]:.0f}–{rss[1]:.0f} | |",
    ])
    print(table)
    if args.write_docs:
        replace_section(str(ROOT / "docs" / "voice.md"), "bench-voice", table)

    def spread(num: str, den: str) -> str:
        _, lo, hi = median_spread([a / b for a, b in zip(results[num], results[den])])
        return f"({lo:.2f}–{hi:.2f})"

    write_summary(args.summary, [
        Figure("Voice: clips/s through the queue, transcript provided", f"{median_spread(results['queue'])[0]:.1f} clips/s",
               f"bare `score_clip` in one process: {median_spread(results['bare'])[0]:.1f} clips/s",
               f"{m1:.2f}× {spread('queue', 'bare')}", "≥ 0.8× bare", m1 >= 0.8,
               f"{args.clips} clips × {args.repeat} paired runs, 1 worker process"),
        Figure("Voice: clips/s through the queue, from audio (ASR)",
               f"{median_spread(results['queue_asr'])[0]:.2f} clips/s",
               f"bare `score_clip`: {median_spread(results['bare_asr'])[0]:.2f} clips/s",
               f"{m2:.2f}× {spread('queue_asr', 'bare_asr')}", "≥ 0.8× bare", m2 >= 0.8,
               f"{args.asr_clips} clips × {args.repeat} paired runs"),
    ])


if __name__ == "__main__":
    main()
