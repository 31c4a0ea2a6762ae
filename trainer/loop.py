"""Joint RALF training (paper eq. 11-12): one generator step (destructor + reconstructor + classifier,
Adam 1e-4) and one discriminator step (Adam 2e-4, betas 0.5/0.999) per batch, α ramped 0 -> 1, the L_emb
center c re-estimated from real embeddings once per epoch, checkpoints that resume exactly.

Runs on CPU, on one GPU with autocast (bf16, or fp16 with GradScaler), or under `torchrun` with DDP
(NCCL on CUDA, gloo on CPU); rank 0 logs, validates and writes files. The pieces: `runtime.py`
(device, DDP, autocast, collectives), `run_data.py` (records, splits, batch plan), `networks.py`
(networks, optimizers, scalers), `steps.py` (the two DDP-wrapped steps), `run_state.py` (what a
checkpoint holds and the resume checks), `train_log.py` (the JSON-lines log).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ralf.core.metadata import WeightsMetadata
from ralf.losses.objective import alpha_at
from ralf.weights import save_weights
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.data import Batch, collate_crops, unwrap_batch
from trainer.evaluate import predict_probabilities, video_level
from trainer.metrics import detection_metrics
from trainer.networks import build_parts
from trainer.run_data import load_run_data
from trainer.run_state import RunProgress, build_training_state, restore_training_state, tracker_totals
from trainer.runtime import TrainingError, setup_runtime
from trainer.steps import DiscriminatorStep, GeneratorStep
from trainer.train_log import JsonLog

DEFAULT_EPOCHS = 100
LOG_FILE = "train_log.jsonl"
BEST_WEIGHTS = "best.safetensors"
LAST_WEIGHTS = "last.safetensors"
STEP_WEIGHTS = "weights"  # deployable weights of every checkpoint, with keep_step_weights
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class TrainResult:
    steps: int
    best_auc: float | None
    best_step: int | None
    best_weights: Path | None
    last_weights: Path
    log_path: Path
    seconds: float
    stopped: str = "steps"  # "steps" | "stop_at" | "patience" | "time"


class Trainer:
    """One training run writing into `out_dir`; `run()` trains to the configured number of steps."""

    def __init__(
        self,
        config: TrainConfig,
        data_dir: Path | Sequence[Path],
        out_dir: Path,
        *,
        resume: bool = False,
        progress: bool = True,
        command: str | None = None,
    ) -> None:
        self.config = config
        self.command = command
        self.data_dirs = [Path(data_dir)] if isinstance(data_dir, (str, Path)) else [Path(d) for d in data_dir]
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.runtime = setup_runtime(config)
        self._seed_everything(config.seed)
        self._load_data()
        self._build_networks()
        self.step = 0
        self.best_auc: float | None = None
        self.best_step: int | None = None
        if resume:
            self._resume()
        elif (self.checkpoint_root / ckpt.LATEST).is_file():
            raise TrainingError(
                f"{self.out_dir} already holds a training run; continue it with --resume or choose another folder"
            )

    # ----------------------------------------------------------------- setup
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _load_data(self) -> None:
        cfg = self.config
        self.data = load_run_data(cfg, self.data_dirs, self.runtime)
        epochs = cfg.epochs if cfg.epochs is not None else DEFAULT_EPOCHS
        self.total_steps = cfg.steps if cfg.steps is not None else epochs * self.data.plan.batches_per_epoch
        self.alpha_ramp = cfg.loss.alpha_ramp_steps if cfg.loss.alpha_ramp_steps is not None else self.total_steps
        self.center_every = cfg.center_update_every or self.data.plan.batches_per_epoch

    def _build_networks(self) -> None:
        self.parts, self.objective, self.pretrained = build_parts(self.config, self.runtime)
        self.generator_step: nn.Module = self.runtime.wrap(GeneratorStep(self.parts.model, self.objective))
        self.discriminator_step: nn.Module = self.runtime.wrap(
            DiscriminatorStep(self.parts.discriminator, self.objective)
        )

    # ------------------------------------------------------------ checkpoint
    @property
    def checkpoint_root(self) -> Path:
        return self.out_dir / CHECKPOINTS

    def _resume(self) -> None:
        progress = restore_training_state(
            self.parts,
            ckpt.load_checkpoint(ckpt.latest_checkpoint(self.checkpoint_root)),
            config=self.config,
            fingerprint=self.data.fingerprint,
            runtime=self.runtime,
            pretrained=self.pretrained,
        )
        self.step, self.best_auc, self.best_step = progress.step, progress.best_auc, progress.best_step
        self.pretrained = progress.pretrained

    def _save(self) -> None:
        tracker = tracker_totals(self.parts.center_tracker, self.runtime)
        if not self.runtime.is_main:
            return
        state = build_training_state(
            self.parts,
            RunProgress(self.step, self.best_auc, self.best_step, self.pretrained),
            tracker=tracker,
            config=self.config,
            fingerprint=self.data.fingerprint,
            world_size=self.runtime.world_size,
            epoch_position=self.data.plan.position(self.step),
        )
        ckpt.save_checkpoint(self.checkpoint_root, state, self.config.keep_checkpoints)
        self._export(self.out_dir / LAST_WEIGHTS)
        if self.config.keep_step_weights:
            (self.out_dir / STEP_WEIGHTS).mkdir(exist_ok=True)
            self._export(self.out_dir / STEP_WEIGHTS / f"step-{self.step:06d}.safetensors")

    def _export(self, path: Path, val_auc: float | None = None) -> None:
        training = {
            "step": self.step,
            "total_steps": self.total_steps,
            "val_auc": val_auc,
            "best_val_auc": self.best_auc,
            "command": self.command,
            "data": [str(d) for d in self.data_dirs],
            "data_fingerprint": self.data.fingerprint,
            "train_config": self.config.model_dump(mode="json"),
        }
        metadata = WeightsMetadata(
            config=self.parts.model.config, pretrained=self.pretrained, training=training, crop=self.data.crop
        )
        save_weights(path, self.parts.model, metadata)

    # -------------------------------------------------------------- training
    def _train_step(self, batch: Batch) -> dict[str, float]:
        device = self.runtime.device
        x = batch.images.to(device, non_blocking=True)
        is_fake = batch.is_fake.to(device, non_blocking=True)
        alpha = alpha_at(self.step, self.alpha_ramp)

        with self.runtime.autocast():
            terms, out = self.generator_step(x, is_fake, alpha, self.parts.discriminator)
        self.parts.opt_gen.zero_grad(set_to_none=True)
        self.parts.scaler_gen.scale(terms.total).backward()
        self.parts.scaler_gen.step(self.parts.opt_gen)
        self.parts.scaler_gen.update()

        values = terms.as_floats()
        if self.config.loss.use_adv:
            with self.runtime.autocast():
                disc_loss = self.discriminator_step(x, out.reconstruction.detach(), is_fake)
            self.parts.opt_disc.zero_grad(set_to_none=True)
            self.parts.scaler_disc.scale(disc_loss).backward()
            self.parts.scaler_disc.step(self.parts.opt_disc)
            self.parts.scaler_disc.update()
            values["discriminator"] = float(disc_loss.detach())

        self.parts.center_tracker.update(out.embedding.detach().float(), is_fake)
        return values

    def _update_center(self) -> None:
        """c <- mean real embedding since the last update (eq. 3), identical on every rank."""
        tracker = self.parts.center_tracker
        self.runtime.sum_over_ranks((tracker.sum, tracker.count))
        if int(tracker.count) > 0:
            with torch.no_grad():
                self.parts.model.center.copy_(tracker.compute())
        tracker.reset()

    def _loader(self, start: int, stop: int) -> DataLoader:
        return DataLoader(
            self.data.dataset(self.data.train, training=True),
            batch_sampler=self.data.plan.steps(start, stop),
            num_workers=self.config.num_workers,
            collate_fn=collate_crops,
            pin_memory=self.runtime.device.type == "cuda",
            # Own generator: creating the loader must not draw from the global torch RNG.
            generator=torch.Generator().manual_seed(self.config.seed),
            persistent_workers=False,
        )

    def run(self, stop_at: int | None = None) -> TrainResult:
        """Train until the configured step count, or until `stop_at` (with a checkpoint there)."""
        stop = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        started = time.perf_counter()
        log = JsonLog(self.out_dir / LOG_FILE, self.step) if self.runtime.is_main else None
        if self.runtime.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(self.config.model_dump_json(indent=1), encoding="utf-8")
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (self.progress and self.runtime.is_main),
            dynamic_ncols=True,
        )
        window: dict[str, list[float]] = defaultdict(list)
        window_start = time.perf_counter()
        postfix: dict[str, str] = {}
        batches: Iterator[Any] = iter(self._loader(self.step, stop))
        budget = None if self.config.max_minutes is None else started + 60.0 * self.config.max_minutes
        stopped = "stop_at" if stop < self.total_steps else "steps"
        while self.step < stop:
            batch = unwrap_batch(next(batches))
            for name, value in self._train_step(batch).items():
                window[name].append(value)
            self.step += 1
            bar.update(1)
            if self.step % self.center_every == 0:
                self._update_center()
            out_of_time = budget is not None and time.perf_counter() >= budget
            final = self.step == self.total_steps or out_of_time
            # An early stop (stop_at) logs and checkpoints but does not validate: the choice of
            # best weights stays what an uninterrupted run would make. Running out of time (or of
            # patience) ends the run: that validates, like the last step.
            stopping = final or self.step == stop
            if self.step % self.config.log_every == 0 or stopping:
                record = self._train_record(window, time.perf_counter() - window_start)
                postfix["loss"] = f"{record['losses']['total']:.4f}"
                bar.set_postfix(postfix)
                if log is not None:
                    log.write(record)
                window.clear()
                window_start = time.perf_counter()
            if self.step % self.config.val_every == 0 or final:
                val = self._validate()
                if val is not None and log is not None:
                    log.write(val)
                    postfix["val_auc"] = f"{val['frame']['auc']:.4f}"
                    bar.set_postfix(postfix)
                if self._out_of_patience():
                    stopping = True
                    stopped = "patience"
            if out_of_time and stopped != "patience":
                stopped = "time"
            if self.step % self.config.checkpoint_every == 0 or stopping:
                self._save()
            if stopping:
                break
        bar.close()
        self.runtime.barrier()
        best = self.out_dir / BEST_WEIGHTS
        return TrainResult(
            steps=self.step,
            best_auc=self.best_auc,
            best_step=self.best_step,
            best_weights=best if best.is_file() else None,
            last_weights=self.out_dir / LAST_WEIGHTS,
            log_path=self.out_dir / LOG_FILE,
            seconds=time.perf_counter() - started,
            stopped=stopped,
        )

    def _out_of_patience(self) -> bool:
        """True when the last `patience` validations brought no better AUC (same on every rank)."""
        patience = self.config.patience
        if patience is None:
            return False
        best_step = self.runtime.from_main(self.best_step if self.runtime.is_main else None)
        if best_step is None:
            return False
        return self.step - best_step >= patience * self.config.val_every

    def _train_record(self, window: dict[str, list[float]], seconds: float) -> dict[str, Any]:
        steps = max(len(window.get("total", [])), 1)
        epoch, position = self.data.plan.position(self.step - 1)
        return {
            "event": "train",
            "step": self.step,
            "epoch": epoch,
            "epoch_position": position + 1,
            "lr": self.parts.opt_gen.param_groups[0]["lr"],
            "disc_lr": self.parts.opt_disc.param_groups[0]["lr"],
            "alpha": alpha_at(self.step - 1, self.alpha_ramp),
            "losses": {name: float(np.mean(values)) for name, values in window.items() if name != "alpha"},
            "seconds_per_step": seconds / steps,
            "images_per_second": steps * self.config.batch_size * self.runtime.world_size / max(seconds, 1e-9),
        }

    # ------------------------------------------------------------ validation
    @torch.no_grad()
    def _validate(self) -> dict[str, Any] | None:
        """Frame- and video-level metrics on the validation split (rank 0); best weights on improvement."""
        self.runtime.barrier()
        if not self.runtime.is_main:
            return None
        self.parts.model.eval()
        try:
            probabilities = predict_probabilities(
                self.parts.model,
                self.data.dataset(self.data.val),
                self.runtime.device,
                batch_size=self.config.batch_size * 2,
                num_workers=self.config.num_workers,
                autocast=self.runtime.autocast,
            )
        finally:
            self.parts.model.train()
        labels = np.array([r.is_fake for r in self.data.val])
        frame = detection_metrics(labels, probabilities)
        video_labels, video_scores = video_level(self.data.val, probabilities)
        video = detection_metrics(video_labels, video_scores) if 0 < video_labels.sum() < video_labels.size else None
        improved = self.best_auc is None or frame.auc > self.best_auc
        if improved:
            self.best_auc, self.best_step = frame.auc, self.step
            self._export(self.out_dir / BEST_WEIGHTS, val_auc=frame.auc)
        return {
            "event": "val",
            "step": self.step,
            "frame": frame.as_dict(),
            "video": video.as_dict() if video is not None else None,
            "best_auc": self.best_auc,
            "best_step": self.best_step,
        }


def train(
    config: TrainConfig,
    data_dir: Path | Sequence[Path],
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    command: str | None = None,
) -> TrainResult:
    """Train RALF on the crops in `data_dir`, writing checkpoints, logs and weights into `out_dir`.
    `command` (the command line that started the run) is recorded in the weights' metadata."""
    trainer = Trainer(config, data_dir, out_dir, resume=resume, progress=progress, command=command)
    try:
        return trainer.run(stop_at=stop_at)
    finally:
        trainer.runtime.shutdown()
