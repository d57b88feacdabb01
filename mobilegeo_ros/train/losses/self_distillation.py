"""Inverse self-distillation: the shallow heads teach the deepest head (MobileGeo FISD, CSP-HD HCD).

Paper (PFED/MobileGeo, figure objective 2 + review): ``p_i = softmax(z_i / T)``,
``L = Σ_{i=1}^{N-1} KL(p_i ‖ p_N)``: the deepest distribution is pulled towards each shallower one ("inverse", the
shallow heads keep fine spatial detail that the deep head should retain). CSP-HD's HCD states the same idea.
Not stated (GAP) and our defaults, all config values (hypotheses to ablate):

* temperature ``T = 4``;
* KL direction ``KL(teacher=shallow ‖ student=deepest)``, the usual distillation form;
* stop-gradient on the shallow (teacher) heads, so only the deepest head and what feeds it learn from this term;
* the ``T²`` factor (keeps gradient magnitudes comparable across temperatures, Hinton et al.);
* equal per-stage weights 1 (all shallow heads distil directly into the last one, not chained i → i+1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def inverse_self_distillation(logits: Sequence[torch.Tensor], temperature: float = 4.0,
                              weights: Sequence[float] | None = None, stop_gradient: bool = True) -> torch.Tensor:
    """``Σ_{i<N} w_i · T² · KL(softmax(z_i/T) ‖ softmax(z_N/T))``, KL averaged over the batch.

    ``logits``: N ≥ 2 tensors B×K, shallowest first, deepest (the student) last. ``weights``: N−1 values (default 1).
    With ``stop_gradient`` the shallow heads receive no gradient from this loss. Returns a scalar tensor.
    """
    if len(logits) < 2:
        raise ValueError("inverse_self_distillation: needs at least two heads")
    if temperature <= 0:
        raise ValueError(f"inverse_self_distillation: temperature must be > 0, got {temperature}")
    teachers, student = list(logits[:-1]), logits[-1]
    w = [1.0] * len(teachers) if weights is None else list(weights)
    if len(w) != len(teachers):
        raise ValueError(f"inverse_self_distillation: {len(w)} weights for {len(teachers)} teacher heads")
    log_q = F.log_softmax(student / temperature, dim=1)
    total = student.new_zeros(())
    for wi, z in zip(w, teachers, strict=True):
        if stop_gradient:
            z = z.detach()
        log_p = F.log_softmax(z / temperature, dim=1)
        kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)  # Σ p (log p − log q) / B
        total = total + wi * temperature**2 * kl
    return total


__all__ = ["inverse_self_distillation"]
