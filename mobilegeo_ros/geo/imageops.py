"""Image crops shared by the offline and online sides (RGB uint8 H×W×3 numpy arrays)."""

from __future__ import annotations

import cv2
import numpy as np


def center_square(image: np.ndarray) -> np.ndarray:
    """The central square crop of an H×W×3 image (side min(H, W)): the part of a camera view that is embedded,
    because the index tiles are square."""
    h, w = image.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return image[y0:y0 + s, x0:x0 + s]


def rotate_to_heading(square: np.ndarray, yaw_deg: float, target_deg: float = 0.0) -> np.ndarray:
    """Rotate a square view whose top edge points at compass heading ``yaw_deg`` so that it points at ``target_deg``.

    Turning the heading of the top edge clockwise by Δ means turning the image content counter-clockwise by Δ on
    screen, which is a positive angle for ``cv2.getRotationMatrix2D``. Borders are reflected.
    """
    s = square.shape[0]
    delta = target_deg - yaw_deg
    m = cv2.getRotationMatrix2D((s / 2.0, s / 2.0), delta, 1.0)
    return cv2.warpAffine(square, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


__all__ = ["center_square", "rotate_to_heading"]
