"""Chaos: N distinct scan jobs over 2 workers while workers, their work horses or both are SIGKILLed every
few seconds and the Redis server is killed and restarted once (append-only file). Counts at the end:
finished once, finished twice (or more), lost, failed.

    .venv/bin/python benchmarks/chaos.py                       # 3 runs of 100 jobs
    .venv/bin/python benchmarks/chaos.py --runs 1 --jobs 40 --kill-every 2,5

Everything runs on this machine: its own `redis-server` on a free port on 127.0.0.1 (data in a temp
dir, `--appendonly yes --appendfsync always`, killed with SIGKILL once per run and restarted on the
same files), `ralf-cli worker` processes (tiny random-init model, CPU, forked horses) and generated
clips. A killed worker is replaced by a fresh one at once, so two workers are (re)starting or working
at any time; workers are killed only once they are taking jobs, so the run makes progress.

Definitions, per job: finished once = status finished with one successful execution result; twice =
more than one successful result (the job ran to completion more than once); failed = status failed
(its retries were used up by kills: a killed horse or worker counts as a failed attempt, as in rq);
lost = in no queue, claims hash or registry when the run ends, so nothing would ever run it;
unfinished = still queued, claimed, started or waiting for a retry when the run's deadline came (a
slow machine, not a loss). The kills start when the first worker takes jobs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import psutil  # noqa: E402
import redis  # noqa: E402
import torch  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.registry import ScheduledJobRegistry, StartedJobRegistry  # noqa: E402
from rq.results import Result  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from pipeline import synthetic  # noqa: E402
from ralf.config import RALFConfig  # noqa: E402
from ralf.core.settings import PRIORITIES, Settings  # noqa: E402
from ralf.model import RALF  # noqa: E402
from ralf.weights import save_weights  # noqa: E402
from worker.keys import claims_key  # noqa: E402
from worker.queue import all_queues, connect, enqueue_scan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


class RedisServer:
    def __init__(self, port: int, data_dir: Path) -> None:
        self.port, self.data_dir = port, data_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL,
        )

        def answers() -> bool:
            try:
                return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
            except redis.RedisError:
                return False

        wait_until(answers, 30, "redis-server")

    def crash(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class WorkerProc:
    name: str
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.process.poll() is None

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


def kill(process: psutil.Process | subprocess.Popen[bytes]) -> None:
    try:
        process.kill()  # SIGKILL
    except (psutil.NoSuchProcess, ProcessLookupError):
        pass


@dataclass
class Outcome:
    once: int = 0
    twice: int = 0
    failed: int = 0
    lost: int = 0
    unfinished: int = 0
    lost_where: Counter = field(default_factory=Counter)
    kills: Counter = field(default_factory=Counter)
    workers_started: int = 0
    wall_s: float = 0.0


def locate(connection: redis.Redis, settings: Settings, job: Job, workers: list[str]) -> str:
    """Where a job that is neither finished nor failed sits."""
    queues = all_queues(settings, connection)
    for queue in queues:
        if job.id in queue.get_job_ids():
            return f"queue {queue.name}"
        if job.id in StartedJobRegistry(queue=queue).get_job_ids(cleanup=False):
            return "started registry"
        if job.id in ScheduledJobRegistry(queue=queue).get_job_ids(cleanup=False):
            return "scheduled (retry back-off)"
    for name in workers:
        if connection.hexists(claims_key(settings, name), job.id):
            return f"claimed by {name}"
    return f"nowhere (status {job.get_status().value})"


def run_once(
    run: int, clips: list[Path], weights: Path, args: argparse.Namespace, work_dir: Path, rng: random.Random
) -> Outcome:
    data_dir = work_dir / f"redis-{run}"
    data_dir.mkdir()
    server = RedisServer(free_port(), data_dir)
    server.start()
    prefix = f"chaos{run}x{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "RALF_REDIS_URL": server.url,
        "RALF_KEY_PREFIX": prefix,
        "RALF_QUEUE_HIGH": f"{prefix}-high",
        "RALF_QUEUE_DEFAULT": f"{prefix}-default",
        "RALF_QUEUE_LOW": f"{prefix}-low",
        "RALF_MEDIA_ROOTS": str(clips[0].parent),
        "RALF_WEIGHTS": str(weights),
        "RALF_DEVICE": "cpu",
        "RALF_DECODER": "pyav",
        "RALF_MAX_FRAMES": "6",
        "RALF_TORCH_THREADS": "1",
        "RALF_RETRY_MAX": str(args.retries),
        "RALF_RETRY_INTERVALS_S": "1,2,4",
        "RALF_WORKER_LIVENESS_TTL_S": "3",
        "RALF_REDIS_RETRIES": "10",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    for key, value in env.items():
        if key.startswith("RALF_"):
            os.environ[key] = value
    settings = Settings()
    connection = connect(settings)
    outcome = Outcome()
    logs = work_dir / f"logs-{run}"
    logs.mkdir()
    workers: list[WorkerProc] = []
    names: list[str] = []

    def spawn() -> None:
        name = f"{prefix}-w{outcome.workers_started}"
        outcome.workers_started += 1
        names.append(name)
        with (logs / f"{name}.log").open("wb") as log:
            # `ralf-cli worker`, from this checkout (the benchmark can run from a snapshot of the tree)
            process = subprocess.Popen(
                [sys.executable, "-c", "from cli.main import app; app()", "worker", "--name", name],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        workers.append(WorkerProc(name, process))

    def taking_jobs(worker: WorkerProc) -> bool:
        try:
            return bool(connection.exists(f"rq:worker:{worker.name}")) and worker.alive()
        except redis.RedisError:
            return False

    started = time.monotonic()
    try:
        job_ids = [
            enqueue_scan(connection, settings, str(clip), priority=PRIORITIES[i % 3]).job_id
            for i, clip in enumerate(clips[: args.jobs])
        ]
        assert len(set(job_ids)) == args.jobs
        for _ in range(2):
            spawn()
        low, high = args.kill_every
        # The clock of the chaos starts when the first worker takes jobs (model loading can be slow).
        wait_until(lambda: any(taking_jobs(w) for w in workers), args.timeout_s, "a worker taking jobs")
        chaos_start = time.monotonic()
        next_kill = chaos_start + rng.uniform(low, high)
        restart_at = chaos_start + args.redis_restart_after
        restarted = False
        kills_until = chaos_start + args.chaos_s

        def done_count() -> int:
            jobs = Job.fetch_many(job_ids, connection=connection, serializer=JSONSerializer)
            return sum(1 for job in jobs if job is not None and job.get_status(refresh=False).value in ("finished", "failed"))

        deadline = started + args.timeout_s
        done = 0
        while time.monotonic() < deadline:
            now = time.monotonic()
            for worker in list(workers):  # a worker that exited on its own (e.g. Redis gone) is replaced
                if not worker.alive():
                    workers.remove(worker)
                    spawn()
            if not restarted and now >= restart_at:
                server.crash()
                outcome.kills["redis-server"] += 1
                time.sleep(rng.uniform(0.5, 2.0))
                server.start()
                restarted = True
            if now >= next_kill and now < kills_until:
                mode = rng.choice(["worker", "horse", "both"])
                ready = [w for w in workers if taking_jobs(w)]
                if mode != "worker":  # wait a moment for a worker that is running a job in a horse
                    wait_end = time.monotonic() + 3.0
                    while time.monotonic() < wait_end and not any(w.children() for w in ready):
                        time.sleep(0.05)
                    ready = [w for w in ready if w.children()] or ready
                if ready:
                    victim = rng.choice(ready)
                    horses = victim.children()
                    if not horses:
                        mode = "worker"
                    if mode in ("horse", "both"):
                        for horse in horses:
                            kill(horse)
                    if mode in ("worker", "both"):
                        kill(victim.process)
                        victim.process.wait()
                        workers.remove(victim)
                        spawn()
                    outcome.kills[mode] += 1
                next_kill = now + rng.uniform(low, high)
            try:
                done = done_count()
            except redis.RedisError:
                time.sleep(0.5)
                continue
            if done == args.jobs:
                if restarted:
                    break
                restart_at = now  # every job is done before the planned restart: restart now, then check again
            time.sleep(0.5)
        outcome.wall_s = time.monotonic() - started

        jobs = Job.fetch_many(job_ids, connection=connection, serializer=JSONSerializer)
        for job_id, job in zip(job_ids, jobs):
            if job is None:
                outcome.lost += 1
                outcome.lost_where["job hash gone"] += 1
                continue
            status = job.get_status().value
            successes = sum(1 for r in job.results() if r.type == Result.Type.SUCCESSFUL)
            if status == "finished":
                if successes > 1:
                    outcome.twice += 1
                else:
                    outcome.once += 1
            elif status == "failed":
                outcome.failed += 1
            else:
                where = locate(connection, settings, job, names)
                if where.startswith("nowhere"):
                    outcome.lost += 1  # in no queue, claim or registry: nothing would ever run it
                else:
                    outcome.unfinished += 1  # still on its way when the run's deadline came
                outcome.lost_where[where] += 1
    finally:
        for worker in workers:
            for child in worker.children():
                kill(child)
            kill(worker.process)
            worker.process.wait()
        server.stop()
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--kill-every", default="3,6", help="seconds between kills: low,high (uniform)")
    parser.add_argument("--chaos-s", type=float, default=90.0, help="kills happen during this many seconds")
    parser.add_argument("--redis-restart-after", type=float, default=25.0, help="seconds into the run")
    parser.add_argument("--retries", type=int, default=5, help="RALF_RETRY_MAX (kills use up attempts)")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="a run ends here at the latest")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.kill_every = tuple(float(v) for v in args.kill_every.split(","))
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed")

    work_dir = Path(tempfile.mkdtemp(prefix="ralf-chaos-"))
    media = work_dir / "media"
    media.mkdir()
    print(f"generating {args.jobs} clips in {media} ...", flush=True)
    clips = [
        synthetic.write_face_clip(media / f"c{i:03d}.mp4", codec="h264", num_frames=12, size=(160, 120), fps=6.0, seed=i + 1)
        for i in range(args.jobs)
    ]
    torch.manual_seed(0)
    weights = work_dir / "tiny.safetensors"
    save_weights(weights, RALF(RALFConfig.tiny()).eval())
    rng = random.Random(args.seed)
    print(f"{'run':>3} {'jobs':>5} {'once':>5} {'twice':>6} {'lost':>5} {'failed':>7} {'kills (worker/horse/both/redis)':>33} "
          f"{'workers':>8} {'wall s':>7}")
    totals = Counter()
    for run in range(args.runs):
        outcome = run_once(run, clips, weights, args, work_dir, rng)
        kills = "/".join(str(outcome.kills[k]) for k in ("worker", "horse", "both", "redis-server"))
        print(f"{run + 1:>3} {args.jobs:>5} {outcome.once:>5} {outcome.twice:>6} {outcome.lost:>5} {outcome.failed:>7} "
              f"{kills:>33} {outcome.workers_started:>8} {outcome.wall_s:>7.0f}", flush=True)
        if outcome.lost_where:
            print(f"    not done at the deadline ({outcome.unfinished} unfinished, {outcome.lost} lost): "
                  f"{dict(outcome.lost_where)}")
        totals.update({"once": outcome.once, "twice": outcome.twice, "lost": outcome.lost, "failed": outcome.failed,
                       "unfinished": outcome.unfinished})
    print(f"total: {args.runs * args.jobs} jobs, finished once {totals['once']}, twice {totals['twice']}, "
          f"lost {totals['lost']}, failed {totals['failed']}, unfinished at the deadline {totals['unfinished']}   "
          f"(logs and data: {work_dir})")
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    main()
