"""Resume equivalence: N+M steps in one run equal N steps, stop, resume, M steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.synthetic import write_noise_crops
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.loop import Trainer, TrainingError, train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_noise_crops(tmp_path_factory.mktemp("resume_data"), size=36)


def _config(**overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "preset": "tiny",
        "image_size": 32,
        "batch_size": 4,
        "steps": 6,
        "val_every": 4,
        "log_every": 1,
        "checkpoint_every": 100,
        "center_update_every": 2,  # centre updates before and after the interruption
        "val_fraction": 0.25,
        "num_workers": 0,
        "allow_random_init": True,
        "allow_random_vgg": True,  # every loss term on, L_con with a random frozen VGG19
    }
    return TrainConfig(**{**base, **overrides})


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.latest_checkpoint(run / "checkpoints") / ckpt.STATE_TENSORS))


def test_resume_continues_exactly(crops: Path, tmp_path: Path) -> None:
    config = _config()
    straight = train(config, crops, tmp_path / "straight", progress=False)
    first = train(config, crops, tmp_path / "resumed", progress=False, stop_at=3)
    assert first.steps == 3
    second = train(config, crops, tmp_path / "resumed", progress=False, resume=True)
    assert straight.steps == second.steps == 6

    expected, actual = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    assert expected.keys() == actual.keys()
    prefixes = {name.split("/")[0] for name in expected}
    assert {"model", "discriminator", "opt_gen", "opt_disc", "center_tracker", "rng"} <= prefixes
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert float(expected["model/center"].abs().sum()) > 0  # the centre was really updated

    # The resumed log continues the first one: every step once, same losses as the straight run.
    def losses(run: str) -> list[tuple[int, float]]:
        lines = (tmp_path / run / "train_log.jsonl").read_text().splitlines()
        return [(r["step"], r["losses"]["total"]) for r in map(json.loads, lines) if r["event"] == "train"]

    assert [s for s, _ in losses("resumed")] == list(range(1, 7))
    np.testing.assert_allclose([v for _, v in losses("resumed")], [v for _, v in losses("straight")], rtol=1e-5)
    for run in ("straight", "resumed"):
        assert (tmp_path / run / "best.safetensors").is_file() and (tmp_path / run / "last.safetensors").is_file()


def test_resume_refuses_changed_config_and_fresh_run_refuses_used_folder(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_config(steps=2, loss={"use_con": False}, allow_random_vgg=False), crops, out, progress=False)
    with pytest.raises(TrainingError, match="differs from the checkpoint's in \\['lr'\\]"):
        Trainer(_config(steps=2, lr=5e-4, loss={"use_con": False}, allow_random_vgg=False), crops, out, resume=True)
    with pytest.raises(TrainingError, match="already holds a training run"):
        Trainer(_config(steps=2, loss={"use_con": False}, allow_random_vgg=False), crops, out)


def test_state_dict_flattening_round_trip() -> None:
    parameter = torch.nn.Parameter(torch.randn(3))
    optimizer = torch.optim.Adam([parameter], lr=1e-3, betas=(0.5, 0.9))
    parameter.sum().backward()
    optimizer.step()
    tensors: dict[str, torch.Tensor] = {}
    encoded = ckpt.flatten_state_dict("opt", optimizer.state_dict(), tensors)
    json.dumps(encoded)  # the non-tensor rest is plain JSON
    restored = ckpt.unflatten_state_dict(json.loads(json.dumps(encoded)), tensors)
    fresh = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    fresh.load_state_dict(restored)
    assert fresh.param_groups[0]["lr"] == 1e-3 and tuple(fresh.param_groups[0]["betas"]) == (0.5, 0.9)
    torch.testing.assert_close(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
