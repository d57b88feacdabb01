"""The embedding-model interface shared by every backend, and the backend-independent model identity.

An index stores the identity (and its :func:`fingerprint`) of the model that embedded its tiles; at load time the
identity of the running model is compared with it. The identity deliberately leaves out the backend and device: an
index built with PyTorch on a workstation is valid for an ONNX Runtime or TensorRT export of the same weights on
the drone, as long as the weights, the output dimension, the preprocessing and the GeM exponent are the same.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from mobilegeo_ros.model.preprocess import as_image_list, preprocess


class ModelError(RuntimeError):
    """The model cannot be built or loaded (missing/corrupt weights, wrong shapes, unknown backend); the message
    names the file or setting."""


def fingerprint(identity: dict) -> str:
    """sha256 hex digest of the canonical JSON (sorted keys, no whitespace) of a model identity dict."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


class EmbeddingModel(ABC):
    """Images -> L2-normalised global descriptors.

    Subclasses set ``name`` (str), ``dim`` (descriptor length D), ``input_px`` (square network input side, pixels),
    ``batch_size`` (images per forward pass) and implement :meth:`_forward` and :meth:`identity`.
    """

    name: str
    dim: int
    input_px: int
    batch_size: int = 32

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """One forward pass: B×3×input_px×input_px float32 (output of :func:`preprocess`) -> B×D float32."""

    @abstractmethod
    def identity(self) -> dict:
        """Backend-independent identity: ``{"model", "weights_sha256", "dim", "preprocessing", "gem_p"}``."""

    def fingerprint(self) -> str:
        """:func:`fingerprint` of :meth:`identity`."""
        return fingerprint(self.identity())

    def embed(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Embed RGB images.

        ``images``: an N×H×W×3 uint8 array or a sequence of H×W×3 uint8 RGB arrays of any (mixed) sizes; each is
        resized to ``input_px``×``input_px`` (cv2 INTER_AREA) by the shared :func:`preprocess`.

        Returns an N×D float32 array whose rows have unit L2 norm (N = 0 gives shape (0, D)). Images are processed
        in batches of ``batch_size`` so memory stays bounded for large N.
        """
        imgs = as_image_list(images)
        out = np.empty((len(imgs), self.dim), dtype=np.float32)
        for start in range(0, len(imgs), self.batch_size):
            chunk = imgs[start:start + self.batch_size]
            feats = np.asarray(self._forward(preprocess(chunk, self.input_px)), dtype=np.float32)
            if feats.shape != (len(chunk), self.dim):
                raise ModelError(f"{self.name}: forward pass returned shape {feats.shape}, "
                                 f"expected {(len(chunk), self.dim)}")
            out[start:start + len(chunk)] = feats
        # Normalise here as well (the networks already do): guarantees the contract for every backend, e.g. an
        # fp16 TensorRT engine whose norms drift slightly from 1.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.maximum(norms, np.float32(1e-12), out=norms)
        out /= norms
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, input_px={self.input_px})"


__all__ = ["EmbeddingModel", "ModelError", "fingerprint"]
