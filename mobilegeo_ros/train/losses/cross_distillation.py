"""Cross-distillation from a frozen teacher: logit KL + feature distillation through a learnable projection.

Paper (MobileGeo figure (a), step 2): "logit distillation" (teacher logits ⇔ student logits ⇔ labels) and "feature
distillation" (teacher map F̃^Tea ⇔ student map F̃^Stu). Temperature, which student stage, the projection and the
distance are not stated (GAP). Our defaults (config values, hypotheses):

* logit term ``T² · KL(softmax(z_T/T) ‖ softmax(z_S/T))`` with T = 4, teacher detached (the labels enter through
  the CE term of the loop, not here);
* feature term on the final (stage-4, pre-pooling) maps: a 1×1 convolution projects the student's C_s channels to
  the teacher's C_t, the projected map is bilinearly resized to the teacher's h×w when they differ, distance = MSE
  (``distance="mse"``) or mean ``1 − cosine`` over positions (``distance="cosine"``). Pooled N×C vectors are accepted
  too (the projection is then the same 1×1 weights applied as a linear map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def logit_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 4.0) -> torch.Tensor:
    """``T² · KL(softmax(z_T/T) ‖ softmax(z_S/T))`` averaged over the batch; the teacher is detached."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"logit_distillation: student {tuple(student_logits.shape)} and teacher "
                         f"{tuple(teacher_logits.shape)} logits differ in shape (same classes needed)")
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    return temperature**2 * F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


class FeatureDistillation(nn.Module):
    """Projected student features vs detached teacher features (N×C×h×w maps or N×C vectors)."""

    def __init__(self, student_channels: int, teacher_channels: int, distance: str = "mse") -> None:
        super().__init__()
        if distance not in ("mse", "cosine"):
            raise ValueError(f"FeatureDistillation: distance must be mse or cosine, got {distance!r}")
        self.proj = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=True)
        self.distance = distance

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = teacher.detach()
        vector = student.ndim == 2
        s = student[:, :, None, None] if vector else student
        s = self.proj(s)
        t = teacher[:, :, None, None] if vector else teacher
        if s.shape[-2:] != t.shape[-2:]:
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        if self.distance == "mse":
            return F.mse_loss(s, t)
        return (1.0 - F.cosine_similarity(s, t, dim=1)).mean()


__all__ = ["FeatureDistillation", "logit_distillation"]
