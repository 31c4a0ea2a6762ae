"""Joint RALF training (paper eq. 11-12): one generator step (destructor + reconstructor + classifier,
Adam 1e-4) and one discriminator step (Adam 2e-4, betas 0.5/0.999) per batch, α ramped 0 -> 1, the L_emb
center c re-estimated from real embeddings once per epoch, checkpoints that resume exactly.

Runs on CPU, on one GPU with autocast (bf16, or fp16 with GradScaler), or under `torchrun` with DDP
(NCCL on CUDA, gloo on CPU); rank 0 logs, validates and writes files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ContextManager

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ralf.discriminator import Discriminator
from ralf.losses.contrastive import VGG19Features
from ralf.losses.mobilenet_features import MobileNetV2Features
from ralf.losses.embedding import CenterTracker
from ralf.losses.objective import LossTerms, RALFObjective, alpha_at
from ralf.model import RALF, RALFOutput
from ralf.pretrained_torchvision import load_backbone_imagenet
from ralf.weights import CropGeometry, WeightsMetadata, save_weights
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.data import (
    BalancedBatchPlan,
    Batch,
    CropRecord,
    FaceCropDataset,
    collate_crops,
    ensure_validation,
    load_crop_records,
    require_both_classes,
    select_split,
    unwrap_batch,
    with_fake_source,
)
from trainer.evaluate import predict_probabilities, video_level
from trainer.prepare import read_prepare_options
from trainer.metrics import detection_metrics

DEFAULT_EPOCHS = 100
LOG_FILE = "train_log.jsonl"
BEST_WEIGHTS = "best.safetensors"
LAST_WEIGHTS = "last.safetensors"
CHECKPOINTS = "checkpoints"


class TrainingError(RuntimeError):
    """The run cannot start or continue (bad device / precision request, incompatible resume)."""


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    amp_dtype: torch.dtype | None  # None = full precision

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


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


def setup_runtime(config: TrainConfig) -> Runtime:
    """Device, DDP process group (when launched by torchrun) and autocast dtype."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise TrainingError("--device cuda requested but CUDA is not available")
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # Rank 0 validates alone while the others wait: allow for a long validation set.
        dist.init_process_group(backend="nccl" if want_cuda else "gloo", timeout=timedelta(minutes=60))
    amp = config.amp
    if amp == "auto":
        amp = "bf16" if want_cuda and torch.cuda.is_bf16_supported() else "none"
    if amp != "none" and not want_cuda:
        raise TrainingError(f"mixed precision ({amp}) needs CUDA; use --amp none on CPU")
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return Runtime(device=device, rank=rank, world_size=world_size, amp_dtype=dtype)


class GeneratorStep(nn.Module):
    """Model forward + eq. (12) in one `forward`, so DDP sees the whole generator graph.

    The discriminator comes in as an argument, not a submodule: the generator step gives it no
    gradient, and DDP must not wait for one.
    """

    def __init__(self, model: RALF, objective: RALFObjective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(
        self, x: Tensor, is_fake: Tensor, alpha: float, discriminator: nn.Module
    ) -> tuple[LossTerms, RALFOutput]:
        out = self.model.forward_all(x)
        terms = self.objective.generator_loss(out, x, is_fake, discriminator, self.model.center, alpha)
        return terms, out


class DiscriminatorStep(nn.Module):
    """Eq. (7) in one `forward` (two discriminator passes inside), for the same DDP reason."""

    def __init__(self, discriminator: Discriminator, objective: RALFObjective) -> None:
        super().__init__()
        self.discriminator = discriminator
        # Held outside the module tree: its VGG and buffers belong to the generator step.
        self._objective = [objective]

    def forward(self, x: Tensor, reconstruction: Tensor, is_fake: Tensor) -> Tensor:
        return self._objective[0].discriminator_loss(self.discriminator, x, reconstruction, is_fake)


def crop_geometry(folders: Sequence[Path]) -> CropGeometry:
    """How the training crops were cut (`ralf-cli prepare` records it); folders must agree. Crop
    folders made otherwise are taken to follow the scanner's default geometry."""
    found = {}
    for folder in folders:
        options = read_prepare_options(folder)
        geometry = CropGeometry() if options is None else CropGeometry(margin=options.margin, square=options.square)
        found[str(folder)] = geometry
    if len(set(found.values())) > 1:
        raise TrainingError(f"the data folders were cut with different crop geometries: {found}")
    return next(iter(found.values()))


def data_fingerprint(records: list[CropRecord]) -> str:
    """Identity of the training data (paths, labels, splits) so a resume on other data is refused."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(f"{r.path.name}|{r.video_id}|{int(r.is_fake)}|{r.split}\n".encode())
    return digest.hexdigest()[:16]


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
        loaded = [record for folder in self.data_dirs for record in load_crop_records(folder)]
        self.crop = crop_geometry(self.data_dirs)
        records = ensure_validation(loaded, cfg.val_fraction, cfg.seed)
        self.train_records = with_fake_source(select_split(records, "train"), cfg.fakes)
        self.val_records = with_fake_source(select_split(records, "val"), cfg.fakes)
        self.self_blend = cfg.sbi if cfg.fakes != "data" else None
        require_both_classes(self.train_records, "training")
        require_both_classes(self.val_records, "validation")
        self.fingerprint = data_fingerprint(self.train_records + self.val_records)
        self.image_size = cfg.network_config().image_size
        self.plan = BalancedBatchPlan(
            [r.is_fake for r in self.train_records],
            cfg.batch_size,
            cfg.seed,
            cfg.flip_probability,
            self.runtime.rank,
            self.runtime.world_size,
        )
        epochs = cfg.epochs if cfg.epochs is not None else DEFAULT_EPOCHS
        self.total_steps = cfg.steps if cfg.steps is not None else epochs * self.plan.batches_per_epoch
        self.alpha_ramp = cfg.loss.alpha_ramp_steps if cfg.loss.alpha_ramp_steps is not None else self.total_steps
        self.center_every = cfg.center_update_every or self.plan.batches_per_epoch

    def _build_networks(self) -> None:
        cfg, device = self.config, self.runtime.device
        network = cfg.network_config()
        self.model = RALF(network)
        self.pretrained = {"classifier": "random-init", "vgg19": "unused"}
        if cfg.backbone_weights is not None:
            self.pretrained["classifier"] = load_backbone_imagenet(self.model, cfg.backbone_weights)
        self.discriminator = Discriminator(network.discriminator, network.image_size)
        vgg: VGG19Features | MobileNetV2Features | None = None
        if cfg.loss.use_con and cfg.con_network == "mobilenet_v2":
            assert cfg.con_weights is not None  # TrainConfig checks it
            vgg = MobileNetV2Features(cfg.con_weights)
            self.pretrained["con_features"] = f"mobilenet_v2 {vgg.source}"
        elif cfg.loss.use_con:
            vgg = VGG19Features(cfg.vgg19_weights, allow_random=cfg.allow_random_vgg)
            self.pretrained["vgg19"] = vgg.source
        self.objective = RALFObjective(cfg.loss, network.image_size, vgg)
        self.model.to(device).train()
        self.discriminator.to(device).train()
        self.objective.to(device)
        self.center_tracker = CenterTracker(network.reconstructor.embedding_dim).to(device)
        self.opt_gen = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_disc = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.disc_lr, betas=cfg.disc_betas)
        fp16 = self.runtime.amp_dtype == torch.float16
        self.scaler_gen = torch.amp.GradScaler(device.type, enabled=fp16)
        self.scaler_disc = torch.amp.GradScaler(device.type, enabled=fp16)
        self.generator_step: nn.Module = GeneratorStep(self.model, self.objective)
        self.discriminator_step: nn.Module = DiscriminatorStep(self.discriminator, self.objective)
        if self.runtime.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.generator_step = DistributedDataParallel(self.generator_step, device_ids=ids)
            self.discriminator_step = DistributedDataParallel(self.discriminator_step, device_ids=ids)

    # ------------------------------------------------------------ checkpoint
    @property
    def checkpoint_root(self) -> Path:
        return self.out_dir / CHECKPOINTS

    def _tracker_totals(self) -> dict[str, Tensor]:
        """Center-tracker sums over every rank (a collective: all ranks must call it)."""
        totals = {name: value.detach().clone() for name, value in self.center_tracker.state_dict().items()}
        if self.runtime.distributed:
            for value in totals.values():
                dist.all_reduce(value)
        return totals

    def _training_state(self, tracker: dict[str, Tensor]) -> ckpt.TrainingState:
        tensors: dict[str, Tensor] = {}
        tensors.update(ckpt.module_tensors("model", self.model.state_dict()))
        tensors.update(ckpt.module_tensors("discriminator", self.discriminator.state_dict()))
        tensors.update(ckpt.module_tensors("center_tracker", tracker))
        info: dict[str, Any] = {
            "epoch_position": list(self.plan.position(self.step)),
            "config": self.config.model_dump(mode="json"),
            "data_fingerprint": self.fingerprint,
            "world_size": self.runtime.world_size,
            "optimizers": {
                "generator": ckpt.flatten_state_dict("opt_gen", self.opt_gen.state_dict(), tensors),
                "discriminator": ckpt.flatten_state_dict("opt_disc", self.opt_disc.state_dict(), tensors),
            },
            "scalers": {"generator": self.scaler_gen.state_dict(), "discriminator": self.scaler_disc.state_dict()},
            "best": {"auc": self.best_auc, "step": self.best_step},
            "pretrained": self.pretrained,
        }
        info["rng"] = ckpt.rng_state(tensors)
        return ckpt.TrainingState(step=self.step, tensors=tensors, info=info)

    def _resume(self) -> None:
        state = ckpt.load_checkpoint(ckpt.latest_checkpoint(self.checkpoint_root))
        info = state.info
        try:
            saved = TrainConfig.model_validate(info["config"])
        except Exception as error:  # pydantic ValidationError or missing key: same message
            raise ckpt.CheckpointError(f"checkpoint config unreadable: {error}") from None
        changed = self.config.differences(saved)
        if changed:
            raise TrainingError(f"cannot resume: the training config differs from the checkpoint's in {changed}")
        if info.get("data_fingerprint") != self.fingerprint:
            raise TrainingError("cannot resume: the training/validation data differ from the checkpoint's")
        if info.get("world_size") != self.runtime.world_size:
            raise TrainingError(
                f"cannot resume: checkpoint written with {info.get('world_size')} processes, now {self.runtime.world_size}"
            )
        tensors = state.tensors
        try:
            self.model.load_state_dict(ckpt.module_state("model", tensors))
            self.discriminator.load_state_dict(ckpt.module_state("discriminator", tensors))
            self.center_tracker.load_state_dict(ckpt.module_state("center_tracker", tensors))
            if self.runtime.rank != 0:
                self.center_tracker.reset()  # the checkpoint holds every rank's sums; rank 0 carries them
            optimizers = info["optimizers"]
            self.opt_gen.load_state_dict(ckpt.unflatten_state_dict(optimizers["generator"], tensors))
            self.opt_disc.load_state_dict(ckpt.unflatten_state_dict(optimizers["discriminator"], tensors))
            self.scaler_gen.load_state_dict(info["scalers"]["generator"])
            self.scaler_disc.load_state_dict(info["scalers"]["discriminator"])
            ckpt.restore_rng_state(info["rng"], tensors)
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise ckpt.CheckpointError(f"checkpoint does not fit this run: {error}") from None
        self.step = state.step
        self.best_auc, self.best_step = info["best"]["auc"], info["best"]["step"]
        self.pretrained = info.get("pretrained", self.pretrained)

    def _save(self) -> None:
        tracker = self._tracker_totals()
        if self.runtime.is_main:
            ckpt.save_checkpoint(self.checkpoint_root, self._training_state(tracker), self.config.keep_checkpoints)
            self._export(self.out_dir / LAST_WEIGHTS)

    def _export(self, path: Path, val_auc: float | None = None) -> None:
        training = {
            "step": self.step,
            "total_steps": self.total_steps,
            "val_auc": val_auc,
            "best_val_auc": self.best_auc,
            "command": self.command,
            "data": [str(d) for d in self.data_dirs],
            "data_fingerprint": self.fingerprint,
            "train_config": self.config.model_dump(mode="json"),
        }
        metadata = WeightsMetadata(
            config=self.model.config, pretrained=self.pretrained, training=training, crop=self.crop
        )
        save_weights(path, self.model, metadata)

    # -------------------------------------------------------------- training
    def _autocast(self) -> ContextManager[object]:
        dtype = self.runtime.amp_dtype
        return torch.autocast(self.runtime.device.type, dtype=dtype) if dtype is not None else nullcontext()

    def _train_step(self, batch: Batch) -> dict[str, float]:
        device = self.runtime.device
        x = batch.images.to(device, non_blocking=True)
        is_fake = batch.is_fake.to(device, non_blocking=True)
        alpha = alpha_at(self.step, self.alpha_ramp)

        with self._autocast():
            terms, out = self.generator_step(x, is_fake, alpha, self.discriminator)
        self.opt_gen.zero_grad(set_to_none=True)
        self.scaler_gen.scale(terms.total).backward()
        self.scaler_gen.step(self.opt_gen)
        self.scaler_gen.update()

        values = terms.as_floats()
        if self.config.loss.use_adv:
            with self._autocast():
                disc_loss = self.discriminator_step(x, out.reconstruction.detach(), is_fake)
            self.opt_disc.zero_grad(set_to_none=True)
            self.scaler_disc.scale(disc_loss).backward()
            self.scaler_disc.step(self.opt_disc)
            self.scaler_disc.update()
            values["discriminator"] = float(disc_loss.detach())

        self.center_tracker.update(out.embedding.detach().float(), is_fake)
        return values

    def _update_center(self) -> None:
        """c <- mean real embedding since the last update (eq. 3), identical on every rank."""
        tracker = self.center_tracker
        if self.runtime.distributed:
            dist.all_reduce(tracker.sum)
            dist.all_reduce(tracker.count)
        if int(tracker.count) > 0:
            with torch.no_grad():
                self.model.center.copy_(tracker.compute())
        tracker.reset()

    def _loader(self, start: int, stop: int) -> DataLoader:
        dataset = FaceCropDataset(self.train_records, self.image_size, self_blend=self.self_blend, seed=self.config.seed)
        return DataLoader(
            dataset,
            batch_sampler=self.plan.steps(start, stop),
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
        if self.runtime.distributed:
            dist.barrier()
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
        best_step = self.best_step if self.runtime.is_main else None
        if self.runtime.distributed:
            shared = [best_step]
            dist.broadcast_object_list(shared, src=0)
            best_step = shared[0]
        if best_step is None:
            return False
        return self.step - best_step >= patience * self.config.val_every

    def _train_record(self, window: dict[str, list[float]], seconds: float) -> dict[str, Any]:
        steps = max(len(window.get("total", [])), 1)
        epoch, position = self.plan.position(self.step - 1)
        return {
            "event": "train",
            "step": self.step,
            "epoch": epoch,
            "epoch_position": position + 1,
            "lr": self.opt_gen.param_groups[0]["lr"],
            "disc_lr": self.opt_disc.param_groups[0]["lr"],
            "alpha": alpha_at(self.step - 1, self.alpha_ramp),
            "losses": {name: float(np.mean(values)) for name, values in window.items() if name != "alpha"},
            "seconds_per_step": seconds / steps,
            "images_per_second": steps * self.config.batch_size * self.runtime.world_size / max(seconds, 1e-9),
        }

    # ------------------------------------------------------------ validation
    @torch.no_grad()
    def _validate(self) -> dict[str, Any] | None:
        """Frame- and video-level metrics on the validation split (rank 0); best weights on improvement."""
        if self.runtime.distributed:
            dist.barrier()
        if not self.runtime.is_main:
            return None
        self.model.eval()
        try:
            probabilities = predict_probabilities(
                self.model,
                FaceCropDataset(self.val_records, self.image_size, self_blend=self.self_blend, seed=self.config.seed),
                self.runtime.device,
                batch_size=self.config.batch_size * 2,
                num_workers=self.config.num_workers,
                autocast=self._autocast,
            )
        finally:
            self.model.train()
        labels = np.array([r.is_fake for r in self.val_records])
        frame = detection_metrics(labels, probabilities)
        video_labels, video_scores = video_level(self.val_records, probabilities)
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


class JsonLog:
    """Append-only JSON-lines log; on resume, lines from steps after the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _line_step(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=True) + "\n")


def _line_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (json.JSONDecodeError, AttributeError):
        return math.inf


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
        if trainer.runtime.distributed and dist.is_initialized():
            dist.destroy_process_group()
