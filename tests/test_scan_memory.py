"""Memory stays bounded: a 10x longer video barely raises the scanning process's peak RSS.

Each scan runs in a fresh interpreter that reports its own peak RSS. Frames are 1920x1080, so a
scanner that kept its sampled frames would add ~6 MB per frame (>100 MB over the long clip),
far beyond the allowed growth; a bounded one holds only one chunk of frames at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import synthetic
from ralf.core.options import ScanOptions

SIZE = (1920, 1080)
SHORT_FRAMES, LONG_FRAMES = 2, 20

_CHILD = """
import json, resource, sys
from ralf.core.options import ScanOptions
from pipeline.scan import Scanner
scanner = Scanner(ScanOptions.model_validate_json(sys.argv[2]), preset_if_random="tiny")
verdict = scanner.scan(sys.argv[1])
print(json.dumps({
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "label": verdict.label,
    "frames": verdict.counts.frames_decoded,
    "faces": verdict.counts.faces,
}))
"""


def _scan_in_fresh_process(path: Path, options: ScanOptions) -> dict:
    # glibc raises its mmap threshold after large frees, after which freed frame-sized buffers stay in
    # the heap and RSS drifts up by fragmentation; a fixed threshold makes RSS follow live memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1024 * 1024)}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), options.model_dump_json()],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_ten_times_longer_video_raises_peak_rss_by_less_than_20_percent(tmp_path: Path) -> None:
    short = synthetic.write_face_clip(tmp_path / "short.mp4", codec="h264", num_frames=SHORT_FRAMES, size=SIZE)
    long = synthetic.write_face_clip(tmp_path / "long.mp4", codec="h264", num_frames=LONG_FRAMES, size=SIZE)
    # Every frame sampled, small chunks; a large minimum face keeps MTCNN's pyramid short.
    options = ScanOptions(device="cpu", every_n=1, chunk_size=2, batch_size=4, min_face_size=300)

    short_run = _scan_in_fresh_process(short, options)
    long_run = _scan_in_fresh_process(long, options)

    assert (short_run["frames"], long_run["frames"]) == (SHORT_FRAMES, LONG_FRAMES)
    assert long_run["faces"] == LONG_FRAMES, "the face must be found so crops and scores are exercised"
    growth = long_run["peak_rss_mb"] - short_run["peak_rss_mb"]
    assert long_run["peak_rss_mb"] < 1.2 * short_run["peak_rss_mb"], (short_run, long_run)
    # Stricter: far less than what keeping the extra sampled frames would cost.
    extra_frames_mb = (LONG_FRAMES - SHORT_FRAMES) * SIZE[0] * SIZE[1] * 3 / 2**20
    assert growth < 0.5 * extra_frames_mb, (growth, extra_frames_mb)
