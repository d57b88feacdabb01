"""Cross-distillation from a frozen teacher: logit KL (or in-batch similarity KL) + feature distillation.

Paper (MobileGeo figure (a), step 2): "logit distillation" (teacher logits ⇔ student logits ⇔ labels) and "feature
distillation" (teacher map F̃^Tea ⇔ student map F̃^Stu). Temperature, which student stage, the projection and the
distance are not stated (GAP). Our defaults (config values, hypotheses):

* logit term ``T² · KL(softmax(z_T/T) ‖ softmax(z_S/T))`` with T = 4, teacher detached (the labels enter through
  the CE term of the loop, not here);
* feature term on the final (stage-4, pre-pooling) maps: a 1×1 convolution projects the student's C_s channels to
  the teacher's C_t, the projected map is bilinearly resized to the teacher's h×w when they differ, distance =
  mean ``1 − cosine`` over positions (``distance="cosine"``, the default, in [0, 2] whatever the features' scale) or
  MSE (``distance="mse"``, the earlier default). Pooled N×C vectors are accepted too (the projection is then the
  same 1×1 weights applied as a linear map). Why cosine: MSE on raw, unnormalised maps measured ``feature_kd`` 768
  against InfoNCE 1.4 at equal weights (issue 19), so it drowned every retrieval term;
* similarity term, for teachers without a classifier for our locations (the pretrained teachers of
  :mod:`mobilegeo_ros.train.teachers`): not in the papers (which distil logits); ours replaces the logit term. The
  in-batch similarity structure of the teacher's descriptors is distilled into the student's embedding (relational
  KD, Park et al. CVPR 2019, in a softmax form): per row i, the cosine similarities to the other rows j ≠ i are
  standardised (``z = (r − mean)/std`` over the row) and ``KL(softmax(z_T,i/τ) ‖ softmax(z_S,i/τ))`` is averaged
  over rows. Unit vectors and standardised rows make the term independent of the descriptors' scale and size and
  of each network's similarity offset and spread (generic CNN GeM descriptors put nearly every pair of aerial
  tiles at a high cosine, so raw similarities at a small τ give a near-zero KL that teaches nothing), so only the
  ranking structure is taught. τ = 1 (hypothesis, ``train.sim_kd_temperature``);
  ``test/test_train_teachers.py::test_default_distillation_terms_are_on_the_scale_of_the_retrieval_terms`` checks
  that the term starts within a factor 10 of InfoNCE.
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


def similarity_distillation(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor,
                            temperature: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Row-averaged ``KL(softmax(z_T,i/τ) ‖ softmax(z_S,i/τ))`` of the standardised off-diagonal cosine similarities
    (module docstring; a constant row, std < ``eps``, becomes uniform).

    ``student_embedding``: N×D_s, ``teacher_embedding``: N×D_t (same N rows, same images; any D); both are
    L2-normalised here; the teacher is detached. N ≥ 3. Returns a scalar tensor (0 when the structures agree).
    """
    n = student_embedding.shape[0]
    if teacher_embedding.shape[0] != n or n < 3 or student_embedding.ndim != 2 or teacher_embedding.ndim != 2:
        raise ValueError(f"similarity_distillation: N×D_s and N×D_t with N >= 3 expected, got "
                         f"{tuple(student_embedding.shape)} and {tuple(teacher_embedding.shape)}")
    if temperature <= 0:
        raise ValueError(f"similarity_distillation: temperature must be > 0, got {temperature}")
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=student_embedding.device)
    s = F.normalize(student_embedding.float(), dim=1)
    t = F.normalize(teacher_embedding.detach().float(), dim=1)

    def standardised_rows(unit: torch.Tensor) -> torch.Tensor:
        rows = (unit @ unit.T)[off_diagonal].view(n, n - 1)
        centred = rows - rows.mean(dim=1, keepdim=True)
        return centred / rows.std(dim=1, keepdim=True).clamp_min(eps) / temperature

    return F.kl_div(F.log_softmax(standardised_rows(s), dim=1), F.log_softmax(standardised_rows(t), dim=1),
                    reduction="batchmean", log_target=True)


class FeatureDistillation(nn.Module):
    """Projected student features vs detached teacher features (N×C×h×w maps or N×C vectors)."""

    def __init__(self, student_channels: int, teacher_channels: int, distance: str = "cosine") -> None:
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


__all__ = ["FeatureDistillation", "logit_distillation", "similarity_distillation"]
