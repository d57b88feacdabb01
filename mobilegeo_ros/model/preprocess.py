"""The one image preprocessing shared by every inference backend (torch, onnxruntime, tensorrt) and by training.

Keeping it in one place is what makes an index built with one backend valid for another: the model identity
(:meth:`mobilegeo_ros.model.base.EmbeddingModel.identity`) records :data:`PREPROCESSING`, so a change here changes the
fingerprint and old indexes are refused instead of silently returning worse matches.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# ImageNet statistics (RGB order) that the shipped MobileNetV2 weights were trained with.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def preprocessing_spec(input_px: int) -> dict:
    """JSON-able description of :func:`preprocess` for the model identity (changes when the maths changes)."""
    return {
        "input_px": int(input_px),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "resize": "cv2.INTER_AREA",
        "channel_order": "RGB",
        "scale": "1/255",
        "layout": "NCHW",
    }


def as_image_list(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Split ``images`` (N×H×W×3 uint8 array, or a sequence of H×W×3 uint8 arrays) into a list of H×W×3 arrays.

    Raises ValueError naming the offending image for a wrong dtype or shape.
    """
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            raise ValueError(f"images: got a single H×W×3 image of shape {images.shape}; pass a batch "
                             "(N×H×W×3 array or a list of images)")
        if images.ndim != 4:
            raise ValueError(f"images: expected an N×H×W×3 uint8 array, got shape {images.shape}")
        seq: Sequence[np.ndarray] = list(images)
    else:
        seq = list(images)
    out = []
    for i, img in enumerate(seq):
        img = np.asarray(img)
        if img.dtype != np.uint8:
            raise ValueError(f"images[{i}]: expected uint8 RGB, got dtype {img.dtype}")
        if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
            raise ValueError(f"images[{i}]: expected an H×W×3 RGB image, got shape {img.shape}")
        out.append(img)
    return out


def preprocess(images: np.ndarray | Sequence[np.ndarray], input_px: int) -> np.ndarray:
    """uint8 RGB images of any size -> normalised float32 network input.

    Each H×W×3 image is resized to ``input_px``×``input_px`` with ``cv2.INTER_AREA`` (aspect ratio is not kept: the
    tiles and camera crops fed here are square already), scaled to [0, 1], and normalised per channel with the
    ImageNet mean/std.

    Returns an N×3×input_px×input_px float32 C-contiguous array (NCHW, RGB channel order); N = 0 gives shape
    (0, 3, input_px, input_px).
    """
    imgs = as_image_list(images)
    out = np.empty((len(imgs), 3, input_px, input_px), dtype=np.float32)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    for i, img in enumerate(imgs):
        if img.shape[0] != input_px or img.shape[1] != input_px:
            img = cv2.resize(np.ascontiguousarray(img), (input_px, input_px), interpolation=cv2.INTER_AREA)
        x = (img.astype(np.float32) * np.float32(1.0 / 255.0) - mean) / std
        out[i] = x.transpose(2, 0, 1)
    return out


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "as_image_list", "preprocess", "preprocessing_spec"]
