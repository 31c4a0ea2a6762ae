"""Fuzz: byte-flipped and truncated mutants of a few generated videos through one Scanner process.

    .venv/bin/python benchmarks/fuzz.py                        # 300 mutants, decoder auto (as deployed)
    .venv/bin/python benchmarks/fuzz.py --mutants 100 --decoder pyav --seed 3

Seeds: the moving-face clip as H.264/MP4, VP9/WebM, VP8/WebM and MJPEG/AVI (160x120, 12 frames).
Mutations (seeded): flip 1-64 random bytes, flip bytes in the first 512 (container headers),
overwrite a block with noise, truncate at a random point, repeat a chunk.

One child process loads one Scanner (tiny random-init model, CPU) and scans the mutants one after
another, as a worker would; the parent feeds it paths and waits for each answer. Counted:
- labels of the verdicts (error verdicts grouped by the start of their reason),
- exceptions escaping `Scanner.scan` (it must return an error verdict for bad input instead),
- hangs: no answer within --hang-s seconds (the child is killed and restarted),
- crashes: the child died (a signal or exit) while scanning (it is restarted),
and the child's peak memory. A mutant that hangs or crashes is written to the output folder.

Then file names as an attacker picks them, given to the scanner relative to its working directory (where
FFmpeg would read a protocol prefix): names that are not UTF-8, names with protocol prefixes (`concat:`,
`http:`, `file:`, `subfile,`) holding garbage next to the real file they name, and names of dots only.
Each must be answered as the file it names (a copy of a seed: a verdict; garbage: an error verdict).
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import psutil  # noqa: E402

SEEDS = (("h264", ".mp4"), ("vp9", ".webm"), ("vp8", ".webm"), ("mjpeg", ".avi"))
MUTATIONS = ("flip", "flip-header", "block", "truncate", "repeat")


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    buf = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 64)):
            buf[rng.randrange(len(buf))] ^= rng.randint(1, 255)
    elif kind == "flip-header":
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(min(512, len(buf)))] ^= rng.randint(1, 255)
    elif kind == "block":
        length = rng.randint(16, max(17, len(buf) // 10))
        start = rng.randrange(max(1, len(buf) - length))
        buf[start : start + length] = rng.randbytes(length)
    elif kind == "truncate":
        buf = buf[: rng.randint(1, len(buf) - 1)]
    elif kind == "repeat":
        length = rng.randint(16, max(17, len(buf) // 8))
        start = rng.randrange(max(1, len(buf) - length))
        at = rng.randrange(len(buf))
        buf[at:at] = buf[start : start + length]
    return bytes(buf)


def error_group(reason: str) -> str:
    """'not a readable video file', 'truncated or corrupt video', ... without file names and numbers."""
    text = re.sub(r"\S+\.(mp4|webm|avi)\b", "<file>", reason)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text.split(":")[0][:60]


# --- the child: one Scanner, many files ---------------------------------------------------------------
def child(decoder: str) -> None:
    import torch

    from pipeline.scan import Scanner
    from ralf.core.options import ScanOptions

    torch.set_num_threads(1)
    scanner = Scanner(ScanOptions(device="cpu", decoder=decoder, max_frames=8), None, preset_if_random="tiny")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        path = os.fsdecode(bytes.fromhex(line.strip()))  # hex: any file name, UTF-8 or not
        started = time.perf_counter()
        try:
            verdict = scanner.scan(path)
            answer = {"label": verdict.label, "error": verdict.error or "", "warnings": verdict.warnings}
        except Exception as exc:  # noqa: BLE001 - exactly what this benchmark counts
            answer = {"label": "escaped", "error": f"{type(exc).__name__}: {exc}"[:300], "warnings": []}
        answer["seconds"] = time.perf_counter() - started
        sys.stdout.write(json.dumps(answer, ensure_ascii=True) + "\n")
        sys.stdout.flush()


class Child:
    def __init__(self, decoder: str, cwd: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--child", "--decoder", decoder],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=cwd,  # the names phase gives names relative to it
        )
        self.peak_rss = 0
        line = self._read_line(300)
        if line != "ready":
            raise RuntimeError(f"scanner process did not start: {line!r}")

    def _read_line(self, timeout_s: float) -> str | None:
        """One line from the child, None on timeout, '' when it died."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        buffer = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.process.stdout], [], [], min(left, 0.2))
            self._sample_memory()
            if not ready:
                if self.process.poll() is not None:
                    return ""
                continue
            byte = os.read(self.process.stdout.fileno(), 1)
            if not byte:
                return ""
            if byte == b"\n":
                return buffer.decode(errors="replace")
            buffer += byte

    def _sample_memory(self) -> None:
        try:
            self.peak_rss = max(self.peak_rss, psutil.Process(self.process.pid).memory_info().rss)
        except psutil.NoSuchProcess:
            pass

    def scan(self, path: Path, timeout_s: float) -> dict | str:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(os.fsencode(path).hex().encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return "crash"
        line = self._read_line(timeout_s)
        if line is None:
            return "hang"
        if line == "":
            return "crash"
        return json.loads(line)

    def kill(self) -> int | None:
        self.process.kill()
        return self.process.wait()


# (name relative to the scanner's working directory, whether it holds a real clip or garbage)
HOSTILE_NAMES = (
    (os.fsdecode(b"caf\xe9-\xff\xfe.mp4"), "clip"),  # Latin-1 bytes: not UTF-8
    (os.fsdecode(b"\x80\x81.mp4"), "garbage"),
    ("concat:seed_h264.mp4", "garbage"),  # FFmpeg's concat protocol would read the seed instead
    ("concat:seed_h264.mp4|seed_vp9.webm", "garbage"),
    ("http:127.0.0.1:9", "garbage"),  # FFmpeg's http protocol would connect (the discard port, locally)
    ("file:seed_h264.mp4", "garbage"),
    ("subfile,,start,0,end,0,,:seed_h264.mp4", "garbage"),
    ("..mp4", "clip"),
    ("...mp4", "clip"),
    ("...", "garbage"),
    ("....", "clip"),
)


def scan_names(scanner: "Child", work: Path, seed: Path, hang_s: float) -> list[tuple[str, str, bool]]:
    """Each hostile name: (name, label or failure, answered as the file it names)."""
    answers = []
    for name, content in HOSTILE_NAMES:
        path = work / name
        if content == "clip":
            shutil.copy(seed, path)
        else:
            path.write_bytes(b"not a video, whatever its name says\n" * 64)
        answer = scanner.scan(Path(name), hang_s)
        if isinstance(answer, str):
            answers.append((name, answer, False))
            continue
        label = answer["label"]
        # garbage must be read and found not to be a video: any other error (a refused connection, a
        # missing file) means something else than the named file was opened
        read = label == "error" and answer["error"].startswith("not a readable video file")
        ok = read if content == "garbage" else label in ("real", "fake", "no_face")
        answers.append((name, label if label != "error" else f"error: {answer['error'][:60]}", ok))
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decoder", default="auto", choices=["auto", "pyav", "dali"])
    parser.add_argument("--hang-s", type=float, default=60.0, help="no answer within this long = a hang")
    parser.add_argument("--out", type=Path, default=None, help="where hanging/crashing mutants are kept")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.decoder)
        return

    from pipeline import synthetic

    work = Path(tempfile.mkdtemp(prefix="ralf-fuzz-"))
    out = args.out or work / "findings"
    out.mkdir(parents=True, exist_ok=True)
    seeds = [
        synthetic.write_face_clip(work / f"seed_{codec}{suffix}", codec=codec, num_frames=12, size=(160, 120), fps=12.0)
        for codec, suffix in SEEDS
    ]
    rng = random.Random(args.seed)
    started = time.monotonic()
    scanner = Child(args.decoder, work)
    print(f"scanner process ready after {time.monotonic() - started:.0f} s; {args.mutants} mutants of "
          f"{', '.join(p.name for p in seeds)} (decoder {args.decoder})", flush=True)

    labels: Counter = Counter()
    errors: Counter = Counter()
    escaped: Counter = Counter()
    by_mutation: dict[str, Counter] = {kind: Counter() for kind in MUTATIONS}
    hangs, crashes, seconds = [], [], []
    warned = 0
    mutant = work / "mutant"
    for i in range(args.mutants):
        seed_path = rng.choice(seeds)
        kind = rng.choice(MUTATIONS)
        path = mutant.with_suffix(seed_path.suffix)
        path.write_bytes(mutate(seed_path.read_bytes(), kind, rng))
        answer = scanner.scan(path, args.hang_s)
        if isinstance(answer, str):
            keep = out / f"{answer}{i:03d}_{kind}{seed_path.suffix}"
            shutil.copy(path, keep)
            code = scanner.kill()
            (hangs if answer == "hang" else crashes).append(f"{keep.name} (exit {code})")
            labels[answer] += 1
            by_mutation[kind][answer] += 1
            scanner = Child(args.decoder, work)
            continue
        labels[answer["label"]] += 1
        by_mutation[kind][answer["label"]] += 1
        seconds.append(answer["seconds"])
        if answer["label"] == "error":
            errors[error_group(answer["error"])] += 1
        if answer["label"] == "escaped":
            escaped[answer["error"].split(":")[0]] += 1
            shutil.copy(path, out / f"escaped{i:03d}_{kind}{seed_path.suffix}")
        if any(w.startswith("damaged video") or "repeated an earlier timestamp" in w for w in answer["warnings"]):
            warned += 1
        if (i + 1) % 50 == 0:
            print(f"  {i + 1} done: {dict(labels)}", flush=True)
    names = scan_names(scanner, work, seeds[0], args.hang_s)
    peak = scanner.peak_rss
    scanner.kill()

    print(f"\n{args.mutants} mutants in {time.monotonic() - started:.0f} s "
          f"(scan p50 {sorted(seconds)[len(seconds) // 2] if seconds else 0:.2f} s, max {max(seconds, default=0):.2f} s)")
    print("labels:            " + ", ".join(f"{k} {v}" for k, v in labels.most_common()))
    print(f"escaping exceptions: {sum(escaped.values())} {dict(escaped) if escaped else ''}")
    print(f"hangs: {len(hangs)} {hangs if hangs else ''}")
    print(f"crashes: {len(crashes)} {crashes if crashes else ''}")
    print(f"verdicts that warn of damage (rejected packets, corrupt/missing frames, repeated timestamps): {warned}")
    print(f"scanner peak RSS (last process): {peak / 2**20:.0f} MiB")
    print("error reasons:")
    for reason, count in errors.most_common():
        print(f"  {count:4d}  {reason}")
    print("by mutation:")
    for kind, counts in by_mutation.items():
        print(f"  {kind:<12} " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    print(f"file names: {sum(ok for _, _, ok in names)} of {len(names)} answered as the file they name")
    for name, label, ok in names:
        print(f"  {'ok ' if ok else 'BAD'} {ascii(name):<44} {label}")
    print(f"findings (mutants that hung, crashed or escaped): {out}")


if __name__ == "__main__":
    main()
