"""Chunked-file merge benchmark: server-side copy against the naive download + re-upload.

The same chunks (200 MiB in 5 MiB chunks by default) are merged into one object two ways,
alternating, ``--repeat`` times, in this process, against moto's S3 server on loopback:

- **server-side** (what the ``files`` worker does): ``S3Storage.compose``, a multipart
  upload with one ``UploadPartCopy`` per chunk, verified by a HEAD;
- **naive baseline**: the worker downloads each chunk (``GetObject``) and uploads it
  again as a part (``UploadPart``), the same multipart shape.

Bytes through the worker are measured by the storage's ``traffic()`` (the S3 client's
send/parse events: headers and bodies on the wire, retries included).
Each result is checked: same size and the ETag the chunks add up to. Times are wall
clock; on loopback the network costs the naive path little, so the time ratio here is a
lower bound of what a real network gives.

    python -m bench.files [--quick] [--mib 200] [--chunk-mib 5] [--repeat 5] [--write-docs]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server on a free loopback port (the benchmark's only network peer)."""
    port = _free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"moto exited: {log.read_text()[-2000:]}") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto did not start")


def naive_compose(client: Any, bucket: str, dest: str, parts: list, content_type: str) -> str:
    """The baseline: every chunk comes down to the worker and goes back up as a part."""
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=dest, ContentType=content_type)["UploadId"]
    try:
        done = []
        for number, part in enumerate(parts, start=1):
            body = client.get_object(Bucket=bucket, Key=part.key)["Body"].read()
            result = client.upload_part(Bucket=bucket, Key=dest, UploadId=upload_id, PartNumber=number, Body=body)
            done.append({"ETag": result["ETag"], "PartNumber": number})
        result = client.complete_multipart_upload(Bucket=bucket, Key=dest, UploadId=upload_id,
                                                  MultipartUpload={"Parts": done})
        return result["ETag"].strip('"')
    except BaseException:
        client.abort_multipart_upload(Bucket=bucket, Key=dest, UploadId=upload_id)
        raise


def run(total_mib: int, chunk_mib: int, repeat: int, tmp: Path) -> dict[str, list[dict[str, float]]]:
    from app.settings import Settings
    from app.storage import Part, S3Storage, make_s3_client, s3_etag

    proc, url = start_moto(tmp / "moto.log")
    try:
        settings = Settings(storage_backend="s3", s3_endpoint_url=url, s3_bucket="bench-files",
                            s3_access_key_id="testing", s3_secret_access_key="testing", s3_timeout=120)  # type: ignore[arg-type]
        client = make_s3_client(settings)
        bucket = settings.s3_bucket
        storage = S3Storage(bucket, client)
        client.create_bucket(Bucket=bucket)
        size, chunk = total_mib * MIB, chunk_mib * MIB
        parts = []
        for index, start in enumerate(range(0, size, chunk)):
            body = hashlib.sha256(f"bench-{index}".encode()).digest() * (min(chunk, size - start) // 32)
            client.put_object(Bucket=bucket, Key=f"files/bench/chunks/{index:05d}", Body=body)
            parts.append(Part(f"files/bench/chunks/{index:05d}", len(body), hashlib.md5(body).hexdigest()))
        expected = s3_etag([p.md5 for p in parts])
        results: dict[str, list[dict[str, float]]] = {"server": [], "naive": []}
        for r in range(repeat):
            # Alternate which goes first, so neither always meets a warmer server.
            order = ("server", "naive") if r % 2 == 0 else ("naive", "server")
            for kind in order:
                dest = f"files/bench-{kind}-{r}/data"
                start_t = time.perf_counter()
                with storage.traffic() as meter:
                    if kind == "server":
                        etag = storage.compose(dest, parts, "application/octet-stream").etag
                    else:
                        etag = naive_compose(client, bucket, dest, parts, "application/octet-stream")
                seconds = time.perf_counter() - start_t
                head = client.head_object(Bucket=bucket, Key=dest)
                assert etag == expected and head["ContentLength"] == size, (kind, etag, expected)
                client.delete_object(Bucket=bucket, Key=dest)
                results[kind].append({"seconds": seconds, "received": meter.received, "sent": meter.sent,
                                      "requests": meter.requests})
                print(f"{kind:6s} run {r + 1}: {seconds:6.2f} s, received {meter.received:,} B, "
                      f"sent {meter.sent:,} B", flush=True)
        return results
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _bytes(n: float) -> str:
    if n >= MIB:
        return f"{n / MIB:,.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:,.1f} KiB"
    return f"{n:,.0f} B"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--mib", type=int, default=200, help="size of the merged file, MiB")
    parser.add_argument("--chunk-mib", type=int, default=5, help="chunk size, MiB (at least 5)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write-docs", action="store_true", help="update the table in docs/files.md")
    parser.add_argument("--summary", help="write the headline figures as JSON here (python -m bench)")
    args = parser.parse_args()
    if args.quick:
        args.mib, args.repeat = 40, 2
    if args.chunk_mib < 5:
        parser.error("--chunk-mib must be at least 5 (S3's smallest part)")
    os.environ.setdefault("LOG_LEVEL", "WARNING")

    from bench.common import Figure, machine, median_spread, replace_section, today, write_summary

    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-files-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    results = run(args.mib, args.chunk_mib, args.repeat, tmp)

    def col(kind: str, key: str) -> tuple[float, float, float]:
        return median_spread([r[key] for r in results[kind]])

    s_t, s_lo, s_hi = col("server", "seconds")
    n_t, n_lo, n_hi = col("naive", "seconds")
    s_rx, n_rx = col("server", "received")[0], col("naive", "received")[0]
    s_tx, n_tx = col("server", "sent")[0], col("naive", "sent")[0]
    speedups = [n["seconds"] / s["seconds"] for s, n in zip(results["server"], results["naive"])]
    sp_m, sp_lo, sp_hi = median_spread(speedups)
    chunks = -(-args.mib // args.chunk_mib)
    met_bytes = "met" if max(r["received"] for r in results["server"]) < 64 * 1024 else "**missed**"
    met_speed = "met" if sp_m >= 1.0 else "**missed**"
    table = "\n".join([
        f"Measured {today()} by `python -m bench.files{' --quick' if args.quick else ''}` on {machine()}; "
        f"{args.mib} MiB in {chunks} chunks of {args.chunk_mib} MiB, moto's S3 server on loopback, "
        f"{args.repeat} alternating runs each.",
        "",
        "| merge | seconds, median (min–max) | bytes received by the worker | bytes sent by the worker | target |",
        "|---|---|---|---|---|",
        f"| server-side (`UploadPartCopy`, what the `files` worker does) | {s_t:.2f} ({s_lo:.2f}–{s_hi:.2f}) | "
        f"{_bytes(s_rx)} | {_bytes(s_tx)} | received < 64 KiB: {met_bytes} |",
        f"| naive baseline (`GetObject` + `UploadPart`) | {n_t:.2f} ({n_lo:.2f}–{n_hi:.2f}) | {_bytes(n_rx)} | "
        f"{_bytes(n_tx)} | |",
        f"| baseline ÷ server-side time (paired) | **{sp_m:.1f}×** ({sp_lo:.1f}–{sp_hi:.1f}) | "
        f"{n_rx / max(s_rx, 1):,.0f}× fewer bytes in | {n_tx / max(s_tx, 1):,.0f}× fewer bytes out | "
        f"≥ 1×: {met_speed} |",
    ])
    print(table)
    if args.write_docs:
        replace_section(str(ROOT / "docs" / "files.md"), "bench-files", table)
    received_ok = max(r["received"] for r in results["server"]) < 64 * 1024
    write_summary(args.summary, [
        Figure(f"Files: server-side merge of {args.mib} MiB", f"{s_t:.2f} s ({s_lo:.2f}–{s_hi:.2f}); "
               f"{_bytes(s_rx)} received by the worker", f"naive GetObject + UploadPart: {n_t:.2f} s, {_bytes(n_rx)} received",
               f"{sp_m:.1f}× faster ({sp_lo:.1f}–{sp_hi:.1f})", "≥ 1× naive speed; < 64 KiB received",
               sp_m >= 1.0 and received_ok, f"{chunks} chunks, {args.repeat} paired runs, moto on loopback"),
    ])


if __name__ == "__main__":
    main()
