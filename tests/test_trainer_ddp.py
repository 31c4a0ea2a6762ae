"""`torchrun` with two CPU processes (gloo): DDP training, rank-0 files, and resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.synthetic import write_noise_crops


def _torchrun() -> list[str]:
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun not installed")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.mark.slow
def test_torchrun_two_processes_train_and_resume(tmp_path: Path) -> None:
    data = write_noise_crops(tmp_path / "data", size=32)
    run = tmp_path / "run"
    base = [
        *_torchrun(), "-m", "cli.main", "train", str(data), str(run), "--preset", "tiny", "--image-size", "32",
        "--batch-size", "4", "--allow-random-init", "--no-con", "--num-workers", "0", "--val-fraction", "0.25",
        "--steps", "4", "--val-every", "4", "--log-every", "1", "--center-every", "3", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cwd = Path(__file__).resolve().parents[1]
    first = subprocess.run([*base, "--stop-at", "2"], env=env, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("trained 2 steps") == 1  # rank 0 reports, rank 1 stays quiet
    second = subprocess.run([*base, "--resume"], env=env, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    state = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert state["step"] == 4
    checkpoint = json.loads((run / "checkpoints" / state["path"] / "state.json").read_text())
    assert checkpoint["world_size"] == 2
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2, 3, 4]
    assert (run / "best.safetensors").is_file() and (run / "last.safetensors").is_file()

    # The same 4 steps without the stop: same weights, optimizer moments and centre (whose
    # accumulation spans the stop at step 2 on both ranks).
    straight = [*base[: base.index(str(run))], str(tmp_path / "straight"), *base[base.index(str(run)) + 1 :]]
    done = subprocess.run(straight, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    expected, actual = (
        load_file(str(next((r / "checkpoints").glob("step_000000004")) / "state.safetensors"))
        for r in (tmp_path / "straight", run)
    )
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
