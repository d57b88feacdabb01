"""Image crops shared by the offline and online sides (RGB uint8 H×W×3 numpy arrays)."""

from __future__ import annotations

import numpy as np


def center_square(image: np.ndarray) -> np.ndarray:
    """The central square crop of an H×W×3 image (side min(H, W)): the part of a camera view that is embedded,
    because the index tiles are square."""
    h, w = image.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return image[y0:y0 + s, x0:x0 + s]


__all__ = ["center_square"]
