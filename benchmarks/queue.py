"""Queue overhead: jobs per minute and job latency through Redis + rq workers, next to `scan` in one process.

    .venv/bin/python benchmarks/queue.py                          # 24 clips, 1 and 2 workers, CPU, tiny model
    .venv/bin/python benchmarks/queue.py --clips 40 --workers 1,2,4 --weights path/to/ralf.safetensors

Baseline: one process loads the Scanner once and scans the clips one after another.
Queue: N `ralf-cli worker` processes (model preloaded, warmed up, one forked work horse per job on
CPU) drain the same clips, all enqueued at once. Latency = enqueue to finish (includes waiting in
the queue); service = start to finish inside a worker. Every run uses its own key prefix and queue
names on the given Redis database and deletes only its own keys afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named queue.py: run as a script, its folder would shadow the stdlib `queue` module.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import redis  # noqa: E402
import torch  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402
from rq.worker import Worker  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pipeline import synthetic  # noqa: E402
from pipeline.scan import Scanner  # noqa: E402
from ralf.config import RALFConfig  # noqa: E402
from ralf.core.settings import Settings  # noqa: E402
from ralf.model import RALF  # noqa: E402
from ralf.weights import save_weights  # noqa: E402
from worker.housekeeping import delete_prefixed_keys  # noqa: E402
from worker.queue import all_queues, connect, enqueue_scan  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, latencies: list[float], wall_s: float, service: list[float] | None = None) -> dict[str, float]:
    row = {
        "jobs_per_min": 60.0 * len(latencies) / wall_s,
        "p50_s": statistics.median(latencies),
        "p95_s": percentile(latencies, 0.95),
        "service_p50_s": statistics.median(service) if service else statistics.median(latencies),
    }
    print(
        f"{name:<22} {row['jobs_per_min']:8.1f} jobs/min   latency p50 {row['p50_s']:6.2f} s  "
        f"p95 {row['p95_s']:6.2f} s   service p50 {row['service_p50_s']:6.2f} s"
    )
    return row


def make_clips(directory: Path, count: int, frames: int, size: tuple[int, int]) -> list[Path]:
    return [
        synthetic.write_face_clip(
            directory / f"clip{i:03d}.mp4", codec="h264", num_frames=frames, size=size, seed=i + 1
        )
        for i in tqdm(range(count), desc="generating clips", leave=False)
    ]


def in_process(settings: Settings, clips: list[Path], threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    scanner = Scanner(settings.scan_options(), settings.weights, preset_if_random=settings.random_preset)
    scanner.warm_up()
    latencies = []
    started = time.perf_counter()
    for clip in tqdm(clips, desc="scan in one process", leave=False):
        t0 = time.perf_counter()
        scanner.scan(clip)
        latencies.append(time.perf_counter() - t0)
    return summary("scan, one process", latencies, time.perf_counter() - started)


def run_queue(env: dict[str, str], clips: list[Path], workers: int, logs: Path) -> dict[str, float]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    env = {
        **env,
        "RALF_KEY_PREFIX": prefix,
        "RALF_QUEUE_HIGH": f"{prefix}-high",
        "RALF_QUEUE_DEFAULT": f"{prefix}-default",
        "RALF_QUEUE_LOW": f"{prefix}-low",
    }
    settings = Settings(**{k[5:].lower(): v for k, v in env.items() if k.startswith("RALF_")})
    connection = connect(settings)
    cli = str(Path(sys.executable).parent / "ralf-cli")
    procs = [
        subprocess.Popen(
            [cli, "worker", "--name", f"{prefix}-w{i}"],
            env=env,
            stdout=(logs / f"{prefix}-w{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for i in range(workers)
    ]
    queue = all_queues(settings, connection)[1]
    try:
        deadline = time.monotonic() + 300
        while len(Worker.all(queue=queue)) < workers:  # wait until preloaded and listening
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"workers did not start; see {logs}")
            time.sleep(0.2)
        started = time.time()
        ids = [enqueue_scan(connection, settings, str(clip)).job_id for clip in clips]
        enqueue_s = (time.time() - started) / len(ids)
        with tqdm(total=len(ids), desc=f"queue, {workers} worker(s)", leave=False) as bar:
            done = 0
            while done < len(ids):
                jobs = Job.fetch_many(ids, connection=connection, serializer=JSONSerializer)
                statuses = [j.get_status(refresh=False).value for j in jobs]
                if "failed" in statuses:
                    raise RuntimeError(f"a benchmark job failed; see {logs}")
                bar.update(statuses.count("finished") - done)
                done = statuses.count("finished")
                time.sleep(0.05)
        jobs = Job.fetch_many(ids, connection=connection, serializer=JSONSerializer)
        wall = max(j.ended_at.timestamp() for j in jobs) - started
        latencies = [(j.ended_at - j.enqueued_at).total_seconds() for j in jobs]
        service = [(j.ended_at - j.started_at).total_seconds() for j in jobs]
        row = summary(f"queue, {workers} worker(s)", latencies, wall, service)
        print(f"{'':22} enqueue (hash + probe + Redis) {enqueue_s * 1000:.0f} ms per job in the client")
        return row
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
        delete_prefixed_keys(connection, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--frames", type=int, default=6, help="frames per clip (6 fps, so 1 s)")
    parser.add_argument("--size", default="160x120")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--weights", type=Path, help="RALF weights (default: a tiny random model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", type=int, default=1, help="threads per scan, in-process and per worker")
    args = parser.parse_args()

    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="ralf-queue-bench-") as tmp:
        tmp_path = Path(tmp)
        media = tmp_path / "media"
        media.mkdir()
        weights = args.weights
        if weights is None:
            torch.manual_seed(0)
            weights = tmp_path / "tiny.safetensors"
            save_weights(weights, RALF(RALFConfig.tiny()).eval())
        clips = make_clips(media, args.clips, args.frames, (width, height))
        env = {
            **os.environ,
            "RALF_REDIS_URL": args.redis_url,
            "RALF_MEDIA_ROOTS": str(media),
            "RALF_WEIGHTS": str(weights),
            "RALF_DEVICE": args.device,
            "RALF_TORCH_THREADS": str(args.torch_threads),
            "OMP_NUM_THREADS": str(args.torch_threads),
        }
        redis.Redis.from_url(args.redis_url).ping()
        print(
            f"{args.clips} clips of {args.frames} frames {args.size}, device {args.device}, "
            f"{args.torch_threads} torch thread(s) per scan, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
        )
        base_settings = Settings(media_roots=[media], weights=weights, device=args.device)
        baseline = in_process(base_settings, clips, args.torch_threads)
        for count in (int(v) for v in args.workers.split(",")):
            row = run_queue(env, clips, count, tmp_path)
            print(
                f"{'':22} throughput x{row['jobs_per_min'] / baseline['jobs_per_min']:.2f} of one process, "
                f"service p50 x{row['service_p50_s'] / baseline['p50_s']:.2f} of a plain scan "
                f"(+{row['service_p50_s'] - baseline['p50_s']:.2f} s queue/fork overhead per job)"
            )


if __name__ == "__main__":
    main()
