"""Bounded load and abuse against a local `ralf-cli serve` (127.0.0.1 only, its own key prefix on the
given Redis database; only its own keys are deleted afterwards). No worker runs: this measures the
front door, not the scans.

    .venv/bin/python benchmarks/api.py                      # 200 concurrent uploads of 20 distinct files
    .venv/bin/python benchmarks/api.py --submissions 400 --files 40 --gets 2000

Load: `--submissions` uploads sent at once (all in flight together) of `--files` distinct generated
clips from `--keys` keys; the same content must give the same job, so exactly `--files` jobs must exist
afterwards, with 0 errors. Then `--gets` GET /v1/scans/{id} with `--concurrency` in flight. p50/p99 of
both. Abuse (each must be refused the right way and leave nothing behind): uploads that stop halfway,
oversized uploads (cut off while streaming: how much was read before the 413), wrong content types
(415), bad keys (401), an Idempotency-Key replayed with another body (409); /healthz must still answer.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder would come first on sys.path: its queue.py would shadow the stdlib `queue`
# and this file the `api` package. The repository root takes its place.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import httpx  # noqa: E402
import redis  # noqa: E402

from api.keys import KeyStore  # noqa: E402
from pipeline import synthetic  # noqa: E402
from ralf.core.settings import Settings, settings_env_names  # noqa: E402
from worker.housekeeping import delete_prefixed_keys  # noqa: E402

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(prefix: str, media: Path, redis_url: str, cap: int) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in settings_env_names()}
    return {
        **base,
        "RALF_REDIS_URL": redis_url, "RALF_KEY_PREFIX": prefix, "RALF_QUEUE_HIGH": f"{prefix}-high",
        "RALF_QUEUE_DEFAULT": f"{prefix}-default", "RALF_QUEUE_LOW": f"{prefix}-low", "RALF_MEDIA_ROOTS": str(media),
        "RALF_RANDOM_WEIGHTS": "1", "RALF_RANDOM_PRESET": "tiny", "RALF_API_MAX_UPLOAD_BYTES": str(cap),
        "RALF_API_RATE_PER_MINUTE": "1000000", "RALF_API_DAILY_QUOTA": "1000000",
    }  # fmt: skip


def _quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms (n={len(ordered)})"


async def _timed(call: asyncio.Future | object) -> tuple[float, httpx.Response | Exception]:
    start = time.perf_counter()
    try:
        response = await call  # type: ignore[misc]
    except httpx.HTTPError as exc:
        return time.perf_counter() - start, exc
    return time.perf_counter() - start, response


async def load(
    base: str, tokens: list[str], files: list[bytes], submissions: int, gets: int, concurrency: int
) -> dict[str, object]:
    limits = httpx.Limits(max_connections=submissions, max_keepalive_connections=submissions)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        posts = [
            client.post("/v1/scans", headers={"Authorization": f"Bearer {tokens[(n // len(files)) % len(tokens)]}"},
                        files={"file": (f"f{n % len(files)}.mp4", files[n % len(files)], "video/mp4")})
            for n in range(submissions)
        ]  # fmt: skip
        started = time.perf_counter()
        post_results = await asyncio.gather(*(_timed(p) for p in posts))
        post_wall = time.perf_counter() - started
        ok = [r for _, r in post_results if isinstance(r, httpx.Response) and r.status_code in (200, 202)]
        errors = [
            r if isinstance(r, Exception) else f"{r.status_code} {r.text[:120]}" for _, r in post_results if r not in ok
        ]
        ids = sorted({r.json()["id"] for r in ok})
        # Every file is sent by every key in turn: shared content, each key its own record of the job.
        owner = {
            r.json()["id"]: tokens[(n // len(files)) % len(tokens)] for n, (_, r) in enumerate(post_results) if r in ok
        }
        semaphore = asyncio.Semaphore(concurrency)

        async def one_get(n: int) -> tuple[float, httpx.Response | Exception]:
            job = ids[n % len(ids)]
            async with semaphore:
                return await _timed(client.get(f"/v1/scans/{job}", headers={"Authorization": f"Bearer {owner[job]}"}))

        get_results = await asyncio.gather(*(one_get(n) for n in range(gets))) if ids else []
        one_at_a_time = [await one_get(n) for n in range(min(gets, 200))] if ids else []
    get_errors = [r for _, r in get_results if isinstance(r, Exception) or r.status_code != 200]
    return {
        "post": [t for t, _ in post_results], "post_wall": post_wall, "post_errors": errors, "job_ids": ids,
        "created": sum(r.status_code == 202 for r in ok), "get": [t for t, _ in get_results], "get_errors": get_errors,
        "get_sequential": [t for t, _ in one_at_a_time],
    }  # fmt: skip


# -- abuse --------------------------------------------------------------------------------------------------


def _head(host: str, token: str, boundary: str, length: str) -> bytes:
    return (f"POST /v1/scans HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n{length}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode()  # fmt: skip


def halfway_upload(port: int, token: str, size: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(_head(f"127.0.0.1:{port}", token, "b", f"Content-Length: {size}\r\n") + b"\x01" * (size // 2))
    time.sleep(0.2)
    sock.close()


def oversized_upload(port: int, token: str, cap: int) -> tuple[str, int]:
    """Stream 16x the cap (chunked, no length announced); (status line, bytes sent before the answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = _head(f"127.0.0.1:{port}", token, "b", "Transfer-Encoding: chunked\r\n")
    first_line, body_start = head.split(b"\r\n\r\n", 1)
    sock.sendall(first_line + b"\r\n\r\n" + f"{len(body_start):x}\r\n".encode() + body_start + b"\r\n")
    sent, answer, block = 0, b"", b"\x01" * 16384
    try:
        while sent < 16 * cap and not answer:
            sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
            sent += len(block)
            if select.select([sock], [], [], 0.02)[0]:
                answer = sock.recv(4096)
    except OSError:
        pass
    answer = answer or sock.recv(4096)
    sock.close()
    return answer.split(b"\r\n", 1)[0].decode(), sent


def abuse(base: str, port: int, token: str, cap: int, media: Path, rounds: int) -> list[str]:
    lines = []
    for _ in range(rounds):
        halfway_upload(port, token, cap // 2)
    time.sleep(1.0)
    partial = [p.name for p in (media / "uploads").glob(".incoming-*")]
    lines.append(f"uploads stopped halfway: {rounds}, partial files left: {len(partial)}")
    status, sent = oversized_upload(port, token, cap)
    lines.append(f"oversized upload (16x the {cap}-byte cap, chunked): {status!r} after {sent} bytes sent")
    auth = {"Authorization": f"Bearer {token}"}
    wrong = [httpx.post(f"{base}/v1/scans", headers={**auth, "Content-Type": "text/plain"}, content=b"x").status_code,
             httpx.post(f"{base}/v1/scans", headers=auth, files={"file": ("a.txt", b"x", "text/plain")}).status_code]  # fmt: skip
    lines.append(f"wrong content types: {wrong} (want 415, 415)")
    bad = [httpx.get(f"{base}/v1/scans", headers={"Authorization": f"Bearer {t}"}).status_code
           for t in ("nonsense", "ralf_0123456789abcdef_" + "A" * 43, token[:-1] + ("B" if token[-1] != "B" else "C"))]  # fmt: skip
    lines.append(f"bad keys: {bad} (want 401 each)")
    idem = {**auth, "Idempotency-Key": str(uuid.uuid4())}
    first = httpx.post(
        f"{base}/v1/scans", headers=idem, files={"file": ("a.mp4", b"one" * 100, "video/mp4")}
    ).status_code
    other = httpx.post(
        f"{base}/v1/scans", headers=idem, files={"file": ("a.mp4", b"two" * 100, "video/mp4")}
    ).status_code
    lines.append(f"Idempotency-Key replayed with another body: {first} then {other} (want 202 then 409)")
    lines.append(f"/healthz afterwards: {httpx.get(f'{base}/healthz').status_code}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--gets", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--abuse-rounds", type=int, default=20)
    parser.add_argument("--cap", type=int, default=4 * 1024 * 1024, help="RALF_API_MAX_UPLOAD_BYTES of the server")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    prefix = f"bapi{uuid.uuid4().hex[:8]}"
    connection = redis.Redis.from_url(args.redis_url)
    with tempfile.TemporaryDirectory() as tmp:
        media, clips = Path(tmp) / "media", Path(tmp) / "clips"
        media.mkdir(), clips.mkdir()
        files = [synthetic.write_face_clip(clips / f"c{n}.mp4", codec="h264", num_frames=4, size=(160, 120), fps=6.0, seed=n).read_bytes()
                 for n in range(args.files)]  # fmt: skip
        env = _env(prefix, media, args.redis_url, args.cap)
        settings = Settings(**{k.removeprefix("RALF_").lower(): v for k, v in env.items() if k.startswith("RALF_")})
        store = KeyStore(connection, settings)
        tokens = [store.create(f"bench-{n}", "submit").token for n in range(args.keys)]
        port = _free_port()
        server = subprocess.Popen([str(BIN / "ralf-cli"), "serve", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=(Path(tmp) / "serve.log").open("wb"))  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit(f"the server did not start:\n{(Path(tmp) / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.2)
            result = asyncio.run(load(base, tokens, files, args.submissions, args.gets, args.concurrency))
            queued = connection.llen(f"rq:queue:{prefix}-default")
            print(f"{args.submissions} concurrent uploads of {args.files} distinct files from {args.keys} keys "
                  f"in {result['post_wall']:.2f} s: {len(result['job_ids'])} jobs ({result['created']} answered 202, "
                  f"{queued} on the queue), {len(result['post_errors'])} errors")  # fmt: skip
            for error in result["post_errors"][:5]:  # type: ignore[index]
                print("   ", error)
            print(f"POST /v1/scans: {_quantiles(result['post'])}")  # type: ignore[arg-type]
            print(f"GET /v1/scans/{{id}} ({args.concurrency} in flight): {_quantiles(result['get'])}, "
                  f"{len(result['get_errors'])} errors")  # type: ignore[arg-type]  # fmt: skip
            print(f"GET /v1/scans/{{id}} one at a time: {_quantiles(result['get_sequential'])}")  # type: ignore[arg-type]
            for line in abuse(base, port, tokens[0], args.cap, media, args.abuse_rounds):
                print(line)
            ok = (
                len(result["job_ids"]) == args.files == queued
                and not result["post_errors"]
                and not result["get_errors"]
            )  # type: ignore[arg-type]
            print("OK" if ok else "FAILED: not exactly one job per distinct file, or errors")
        finally:
            server.terminate()
            server.wait(timeout=30)
            delete_prefixed_keys(connection, prefix)


if __name__ == "__main__":
    main()
