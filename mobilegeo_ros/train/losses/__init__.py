"""Training losses, one module per loss (each docstring: what the papers state, what our default is)."""

from mobilegeo_ros.train.losses.cross_distillation import FeatureDistillation, logit_distillation, \
    similarity_distillation
from mobilegeo_ros.train.losses.cross_entropy import multi_head_cross_entropy
from mobilegeo_ros.train.losses.csda import combine_views, csda_weights, view_confidence
from mobilegeo_ros.train.losses.infonce import SymmetricInfoNCE, symmetric_infonce
from mobilegeo_ros.train.losses.palw import PALW
from mobilegeo_ros.train.losses.self_distillation import inverse_self_distillation
from mobilegeo_ros.train.losses.triplet import batch_hard_triplet
from mobilegeo_ros.train.losses.uapa import confidence_weights, gaussian_kernel, uapa_loss, weighted_mmd2

__all__ = ["PALW", "FeatureDistillation", "SymmetricInfoNCE", "batch_hard_triplet", "combine_views",
           "confidence_weights", "csda_weights", "gaussian_kernel", "inverse_self_distillation", "logit_distillation",
           "multi_head_cross_entropy", "similarity_distillation", "symmetric_infonce", "uapa_loss", "view_confidence",
           "weighted_mmd2"]
