"""The training loop behind ``mobilegeo train --config PRESET_OR_YAML --out RUN_DIR``.

One :class:`Trainer` per process; under ``torchrun`` (``WORLD_SIZE`` > 1) it runs DDP (NCCL on CUDA, gloo on CPU)
and every rank takes every world-size-th batch of the same unique-class batch order. Per step: the drone and
satellite images of a batch go through the one shared network in a single forward pass; the loss is the weighted
sum of the terms switched on by the config (see :mod:`mobilegeo_ros.train.losses` and the presets in
:mod:`mobilegeo_ros.train.run_config`). AdamW, linear warm-up then cosine decay stepped per iteration, fp16 autocast
with a GradScaler on CUDA, gradient clipping by value.

Run directory (every file written atomically):
``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON line per ``log_every`` steps: step, epoch, lr,
every loss term, its weighted share ``weighted_<term>`` of the total, seconds), ``checkpoint.safetensors``
(network + loss parameters) with ``trainer_state.pt`` (optimizer, scheduler, scaler, step, epoch, PALW state; loaded
``weights_only``) for ``--resume``,
``model.safetensors`` (the full trained network, e.g. a teacher for distillation), ``student.safetensors`` for a
student (the deployable ``mobilenetv2_gem`` weights: ``model.weights`` of the node/CLI; with ``train.wise_alpha`` < 1
the WiSE-FT interpolation with the init, the fine-tuned end in ``student_finetuned.safetensors``) and ``eval.json``
(ortho data: D→S and S→D metrics of ``student.safetensors`` on the held-out test locations).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from mobilegeo_ros.config import ConfigError
from mobilegeo_ros.model.preprocess import preprocess
from mobilegeo_ros.model.weights import load_state_dict_file, save_safetensors
from mobilegeo_ros.util.files import atomic_path, atomic_write_text
from mobilegeo_ros.train import losses as L
from mobilegeo_ros.train.run_config import RunConfig
from mobilegeo_ros.train.datasets import OrthoDataConfig, PairDataset, SyntheticOrtho, central_square_fov_deg, \
    sues200_train, university1652_train
from mobilegeo_ros.train.networks import OpenNsfwTeacherNet, StudentNet, TimmTeacherNet

log = logging.getLogger(__name__)


def unique_class_batches(labels: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
    """One epoch of batches in which no class repeats (in-batch negatives for InfoNCE; Sample4Geo/MEAN sampling).

    Every pair appears exactly once; batches with fewer than 2 pairs (possible at the end) are dropped.
    """
    rng = np.random.default_rng(seed)
    queues = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}
    batches = []
    while queues:
        classes = rng.permutation(list(queues))
        for start in range(0, len(classes), batch_size):
            chunk = classes[start:start + batch_size]
            batch = np.array([queues[int(c)].pop() for c in chunk], dtype=np.int64)
            if len(batch) >= 2:
                batches.append(batch)
        queues = {c: q for c, q in queues.items() if q}
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def collate(items: list[tuple[np.ndarray, np.ndarray, int]], input_px: int, rng: np.random.Generator | None,
            aligned: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Preprocess a list of (drone, satellite, class) into (B×3×S×S drone, B×3×S×S satellite, B labels).

    Augmentation when ``rng`` is given (MEAN, hypothesis): the satellite image rotated by a random multiple of 90°
    (drone yaw is arbitrary; with ``aligned`` pairs, ``pairing: index``, both images by the same multiple so the
    pair stays aligned), and a horizontal flip applied to both images of a pair with probability ½.
    """
    drones, sats, labels = [], [], []
    for drone, sat, label in items:
        if rng is not None:
            k = int(rng.integers(4))
            sat = np.rot90(sat, k)
            if aligned:
                drone = np.rot90(drone, k)
            if rng.random() < 0.5:
                drone, sat = drone[:, ::-1], sat[:, ::-1]
        drones.append(np.ascontiguousarray(drone))
        sats.append(np.ascontiguousarray(sat))
        labels.append(label)
    return (torch.from_numpy(preprocess(drones, input_px)), torch.from_numpy(preprocess(sats, input_px)),
            torch.tensor(labels, dtype=torch.int64))


def build_dataset(run: RunConfig, split: str = "train") -> PairDataset:
    """The training (or ``val``/``test`` for ortho) pairs described by ``run.train``."""
    t = run.train
    if not t.data_root:
        raise ConfigError("train.data_root: give the GeoTIFF (ortho) or the dataset root folder")
    if t.data_format == "university1652":
        return university1652_train(t.data_root)
    if t.data_format == "sues200":
        return sues200_train(t.data_root, t.sues_altitude)
    from mobilegeo_ros.geo.raster import read_orthophoto

    ortho = read_orthophoto(t.data_root, run.core.map)
    drone = read_orthophoto(t.drone_map, run.core.map) if t.drone_map else None
    return SyntheticOrtho(ortho, split, ortho_data_config(run), run.core.render, seed=t.seed, drone_ortho=drone)


def ortho_data_config(run: RunConfig) -> OrthoDataConfig:
    t, core = run.train, run.core
    rotations = core.index.rotations if core.index.heading == "gallery_rotations" else 1
    return OrthoDataConfig(tile_size_m=t.tile_size_m, spacing_m=t.spacing_m, views=t.views,
                           splits=tuple(t.splits), gap_m=t.gap_m, out_px=core.model.input_px, pairing=t.pairing,
                           tile_sizes_m=tuple(core.map.tile_sizes_m), rotations=rotations,
                           view_hfov_deg=central_square_fov_deg(core.render) if t.pairing == "index" else None)


def build_network(run: RunConfig, num_classes: int, teacher: bool = False) -> nn.Module:
    """The student, or the configured teacher (``teacher=True`` or ``train.network: teacher``)."""
    t = run.train
    if teacher or t.network == "teacher":
        if t.teacher_kind == "timm":
            backbone = t.teacher_backbone or t.teacher_checkpoint
            return TimmTeacherNet(t.teacher_arch, backbone, num_classes, t.bottleneck, t.dropout)
        return OpenNsfwTeacherNet(num_classes, t.bottleneck, t.dropout)
    net = StudentNet(num_classes, t.bottleneck, t.dropout, gem_p=run.core.model.gem_p, aux_heads=t.aux_heads,
                     pretrained=not t.init_weights)  # init weights replace ImageNet: do not load it first
    if t.init_weights:
        net.load_embedding_weights(t.init_weights)
    if t.freeze_stages:
        net.freeze_stages(t.freeze_stages)
    net.freeze_bn_stats = t.freeze_bn_stats
    return net


def lr_lambda(total_steps: int, warmup_frac: float):
    """Multiplier of the peak lr at a step: linear warm-up over ``warmup_frac`` of the steps, then cosine to 0."""
    warmup = int(round(total_steps * warmup_frac))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return f


class Trainer:
    """Network, losses, optimizer and schedule of one run; :meth:`step` trains on one collated batch."""

    def __init__(self, run: RunConfig, num_classes: int, total_steps: int, device: torch.device,
                 rank: int = 0, world_size: int = 1) -> None:
        t = self.t = run.train
        self.run, self.device, self.rank, self.world_size = run, device, rank, world_size
        torch.manual_seed(t.seed)
        self.net = build_network(run, num_classes).to(device)
        self.criterion = nn.ModuleDict({"infonce": L.SymmetricInfoNCE(t.infonce_temperature,
                                                                       t.infonce_label_smoothing)})
        self.teacher: nn.Module | None = None
        self.named_teacher = bool(t.teacher)  # a pretrained teacher without classifier (train/teachers.py)
        if t.network == "student" and (t.kd_weight > 0 or t.feat_kd_weight > 0) and t.teacher:
            from mobilegeo_ros.train.teachers import load_teacher

            self.teacher = load_teacher(t.teacher, t.teacher_weights or None, t.teacher_px or None, device)
            if self.teacher.feature_channels:
                self.criterion["feat_kd"] = L.FeatureDistillation(self.net.feature_channels,
                                                                  self.teacher.feature_channels, t.feat_kd_distance)
        elif t.network == "student" and (t.kd_weight > 0 or t.feat_kd_weight > 0):
            self.teacher = build_network(run, num_classes, teacher=True)
            state = load_state_dict_file(t.teacher_checkpoint)
            try:
                self.teacher.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ConfigError(f"train.teacher_checkpoint {t.teacher_checkpoint!r} does not fit the "
                                  f"{t.teacher_kind} teacher with {num_classes} classes: {e}") from None
            self.teacher.to(device).eval().requires_grad_(False)
            self.criterion["feat_kd"] = L.FeatureDistillation(self.net.feature_channels,
                                                              self.teacher.feature_channels, t.feat_kd_distance)
        self.criterion.to(device)
        self.model: nn.Module = self.net
        if world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None)
        params = [p for p in self.net.parameters() if p.requires_grad] + list(self.criterion.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        self.total_steps = max(1, total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.total_steps,
                                                                                     t.warmup_frac))
        self.use_amp = bool(t.amp and device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10, enabled=self.use_amp)
        self.palw = L.PALW(t.palw_max, t.palw_min, self.total_steps, t.palw_mode) if t.palw else None
        self.global_step = 0
        self.started_at = time.time()  # the two-step schedule's time budget counts from here (train() resets it)

    def in_step2(self) -> bool:
        """HD-CVGL step 2 (cross-distillation, UAPA) is on: always without ``two_step``; else once ``step1_frac`` of
        the planned steps or, under a wall-time budget (``max_time_s``), of the budget is spent, whichever first
        (a budget that ends before the planned steps would otherwise never reach step 2)."""
        t = self.t
        if not t.two_step:
            return True
        by_time = t.max_time_s > 0 and time.time() - self.started_at >= t.step1_frac * t.max_time_s
        return self.global_step >= t.step1_frac * self.total_steps or by_time

    def _sync_criterion_grads(self) -> None:
        """All-reduce the loss parameters' gradients (not inside DDP's module)."""
        if self.world_size > 1:
            for p in self.criterion.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.world_size

    def losses(self, drone: torch.Tensor, sat: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every active loss term of one batch: its unweighted value ``<term>``, its weighted share of the total
        ``weighted_<term>`` (what the optimizer sees; logged so the terms' scales can be compared), and ``total``."""
        t, b = self.t, len(labels)
        out = self.model(torch.cat([drone, sat]))
        zd, zs = [z[:b] for z in out.logits], [z[b:] for z in out.logits]
        emb = out.embedding.float()
        terms: dict[str, torch.Tensor] = {}
        weighted: dict[str, torch.Tensor] = {}

        def add(name: str, value: torch.Tensor, weight: float) -> None:
            terms[name], weighted[name] = value, weight * value

        if t.ce_weight > 0:
            ce_d = L.multi_head_cross_entropy([z.float() for z in zd], labels, t.label_smoothing)
            ce_s = L.multi_head_cross_entropy([z.float() for z in zs], labels, t.label_smoothing)
            if t.csda:
                w_d, w_s = L.csda_weights(zd[-1].float(), zs[-1].float(), t.csda_favor)
                terms["csda_w_drone"] = w_d
                ce = L.combine_views(ce_d, ce_s, w_d, w_s)
            else:
                ce = ce_d + ce_s
            add("ce", ce, t.ce_weight)
        if t.triplet_weight > 0:
            add("triplet", L.batch_hard_triplet(emb, torch.cat([labels, labels]), t.triplet_margin), t.triplet_weight)
        if t.infonce_weight > 0:
            add("infonce", self.criterion["infonce"](emb[:b], emb[b:]), t.infonce_weight)
        if t.sd_weight > 0 and len(out.logits) > 1:
            sd = (L.inverse_self_distillation([z.float() for z in zd], t.sd_temperature)
                  + L.inverse_self_distillation([z.float() for z in zs], t.sd_temperature))
            weight = self.palw.weight(self.global_step, float(sd.detach())) if self.palw else t.sd_weight
            add("self_distillation", sd, weight)
            terms["sd_weight"] = sd.new_tensor(weight)
        step2 = self.in_step2()
        if step2 and t.uapa_weight > 0:
            add("uapa", L.uapa_loss(zd[-1].float(), zs[-1].float(), t.uapa_bandwidths), t.uapa_weight)
        if step2 and self.teacher is not None:
            x = torch.cat([drone, sat])
            if not self.named_teacher and t.teacher_input_px != x.shape[-1]:
                x = F.interpolate(x, size=(t.teacher_input_px,) * 2, mode="bilinear", align_corners=False)
            with torch.no_grad():
                tout = self.teacher(x)  # a named teacher resizes to its own input side itself
            if t.kd_weight > 0 and self.named_teacher:
                add("similarity_kd", L.similarity_distillation(emb, tout.embedding, t.sim_kd_temperature),
                    t.kd_weight)
            elif t.kd_weight > 0:
                add("logit_kd", L.logit_distillation(out.logits[-1].float(), tout.logits[-1].float(),
                                                     t.kd_temperature), t.kd_weight)
            if t.feat_kd_weight > 0 and "feat_kd" in self.criterion and tout.feature_map is not None:
                add("feature_kd", self.criterion["feat_kd"](out.feature_map.float(), tout.feature_map.float()),
                    t.feat_kd_weight)
        total = emb.new_zeros(())
        for name, value in weighted.items():
            total = total + value
            terms[f"weighted_{name}"] = value
        terms["total"] = total
        return terms

    def step(self, drone: torch.Tensor, sat: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One optimizer step on a collated batch; returns the loss terms as floats."""
        self.net.train()
        if isinstance(self.net, StudentNet):
            self.net.keep_frozen_in_eval()
        drone, sat, labels = drone.to(self.device), sat.to(self.device), labels.to(self.device)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            terms = self.losses(drone, sat, labels)
        total = terms["total"]
        if not torch.isfinite(total):
            raise FloatingPointError(f"step {self.global_step}: loss is {float(total)} ({ {k: float(v) for k, v in terms.items()} })")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self._sync_criterion_grads()
        if self.t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_value_(self.optimizer.param_groups[0]["params"], self.t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.global_step += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    # ---------------------------------------------------------------------------------------------------- state
    def save(self, run_dir: Path, epoch: int, batch_in_epoch: int) -> None:
        state = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        state.update({f"criterion.{k}": v for k, v in self.criterion.state_dict().items()})
        save_safetensors(state, run_dir / "checkpoint.safetensors")
        trainer = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                   "scaler": self.scaler.state_dict(), "step": self.global_step, "epoch": epoch,
                   "batch_in_epoch": batch_in_epoch, "palw_ema": self.palw.ema if self.palw else None}
        with atomic_path(run_dir / "trainer_state.pt") as tmp:
            torch.save(trainer, tmp)

    def load(self, run_dir: Path) -> tuple[int, int]:
        """Restore a :meth:`save`; returns (epoch, batch_in_epoch) to continue from."""
        state = load_state_dict_file(run_dir / "checkpoint.safetensors")
        self.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        self.criterion.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("criterion.")})
        trainer = torch.load(run_dir / "trainer_state.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        self.scaler.load_state_dict(trainer["scaler"])
        self.global_step = int(trainer["step"])
        if self.palw is not None:
            self.palw.ema = trainer["palw_ema"]
        return int(trainer["epoch"]), int(trainer["batch_in_epoch"])


def _device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {spec!r} but CUDA is not available")
    return dev


def evaluate_ortho(net: nn.Module, dataset: SyntheticOrtho, views: int, input_px: int, device: torch.device
                   ) -> dict[str, Any]:
    """D→S and S→D metrics of a network's embedding on a synthetic split (fixed epoch-0 renders)."""
    from mobilegeo_ros.eval.retrieval_metrics import retrieval_metrics

    net.eval()

    def embed(images: list[np.ndarray]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in range(0, len(images), 64):
                x = torch.from_numpy(preprocess(images[s:s + 64], input_px)).to(device)
                out.append(net.embed(x).float().cpu().numpy())
        return np.concatenate(out)

    result: dict[str, Any] = {}
    drones, sats = dataset.retrieval_task("drone2sat", views)
    fd, fs = embed([drones.image(i) for i in range(len(drones))]), embed([sats.image(i) for i in range(len(sats))])
    result["drone2sat"] = retrieval_metrics(fd, drones.labels, fs, sats.labels)
    result["sat2drone"] = retrieval_metrics(fs, sats.labels, fd, drones.labels)
    return result


def train(run: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train per ``run``; writes the run directory (module docstring) and returns it."""
    from tqdm import tqdm

    t = run.train
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(t.device, local_rank)
    if world_size > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    run_dir = Path(run_dir)
    if rank == 0:
        if run_dir.exists() and any(run_dir.iterdir()) and not resume:
            raise ConfigError(f"run directory {str(run_dir)!r} is not empty; pass --resume to continue it")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(run.to_dict(), sort_keys=False))
    dataset = build_dataset(run)
    per_rank = max(2, t.batch_size // world_size)
    n_batches = len(unique_class_batches(dataset.labels, per_rank * world_size, t.seed)) // world_size
    if n_batches == 0:
        raise ConfigError(f"train: {len(dataset)} pairs of {dataset.num_classes} classes give no batch of "
                          f"{t.batch_size} distinct classes")
    total = t.epochs * n_batches if t.max_steps == 0 else min(t.max_steps, t.epochs * n_batches)
    trainer = Trainer(run, dataset.num_classes, total, device, rank, world_size)
    start_epoch, start_batch = 0, 0
    if resume and (run_dir / "trainer_state.pt").is_file():
        start_epoch, start_batch = trainer.load(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    bar = tqdm(total=total, initial=trainer.global_step, disable=not progress or rank != 0, desc="train",
               unit="step")
    t0 = trainer.started_at = time.time()

    def out_of_time() -> bool:
        return bool(t.max_time_s) and time.time() - t0 >= t.max_time_s

    epoch = start_epoch
    while trainer.global_step < total and epoch < t.epochs:
        dataset.set_epoch(epoch)
        batches = unique_class_batches(dataset.labels, per_rank * world_size, t.seed + epoch)
        batches = batches[:n_batches * world_size][rank::world_size]
        aug_rng = np.random.default_rng([t.seed, epoch, rank])
        loader = torch.utils.data.DataLoader(
            _BatchView(dataset, batches[start_batch:]), batch_size=None, shuffle=False,
            num_workers=t.num_workers, collate_fn=_keep)
        for i, items in enumerate(loader, start=start_batch):
            terms = trainer.step(*collate(items, run.core.model.input_px, aug_rng,
                                          aligned=t.data_format == "ortho" and t.pairing == "index"))
            bar.update(1)
            bar.set_postfix(loss=f"{terms['total']:.3f}")
            stop = trainer.global_step >= total or out_of_time()
            if rank == 0 and (trainer.global_step % t.log_every == 0 or stop):
                line = {"step": trainer.global_step, "epoch": epoch, "lr": trainer.scheduler.get_last_lr()[0],
                        **terms, "seconds": round(time.time() - t0, 3), "world_size": world_size}
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(line) + "\n")
            if rank == 0 and t.save_every and trainer.global_step % t.save_every == 0:
                trainer.save(run_dir, epoch, i + 1)
            if stop:
                break
        start_batch = 0
        epoch += 1
        if rank == 0:
            trainer.save(run_dir, epoch, 0)
        if out_of_time():
            log.info("train.max_time_s %.0f s spent after %d steps", t.max_time_s, trainer.global_step)
            break
    bar.close()
    if rank == 0:
        save_safetensors(trainer.net.state_dict(), run_dir / "model.safetensors")
        if isinstance(trainer.net, StudentNet):
            student = run_dir / "student.safetensors"
            if t.wise_alpha < 1.0:
                from mobilegeo_ros.train.wise_ft import interpolate_weights

                finetuned = save_safetensors(trainer.net.embedding_state_dict(),
                                             run_dir / "student_finetuned.safetensors")
                interpolate_weights(t.init_weights or None, finetuned, t.wise_alpha, student)
                trainer.net.load_embedding_weights(student)  # eval.json measures the weights that ship
            else:
                save_safetensors(trainer.net.embedding_state_dict(), student)
        if t.data_format == "ortho" and t.eval_views > 0:
            test = build_dataset(run, "test")
            result = evaluate_ortho(trainer.net, test, t.eval_views, run.core.model.input_px, device)
            atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=2))
    if world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return run_dir


def _keep(items: Any) -> Any:
    """DataLoader collate that keeps the numpy images as they are (the default would make tensors of them)."""
    return items


class _BatchView(torch.utils.data.Dataset):
    """Dataset of whole batches: item i = the list of pairs of batch i (loaded by the DataLoader workers)."""

    def __init__(self, dataset: PairDataset, batches: list[np.ndarray]) -> None:
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
        return [self.dataset[int(j)] for j in self.batches[i]]


__all__ = ["Trainer", "build_dataset", "build_network", "collate", "evaluate_ortho", "lr_lambda", "train",
           "unique_class_batches"]
