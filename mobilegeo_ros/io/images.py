"""Camera image decoding for the node, with numpy only (no rclpy, no cv_bridge).

The functions take the plain field values of ``sensor_msgs/Image`` (``height, width, encoding, is_bigendian, step,
data``) and ``sensor_msgs/CompressedImage`` (``format, data``) so the core stays free of ROS. They return the core's
image convention: an ``H×W×3`` ``uint8`` RGB array (C-contiguous, owning its memory).

Supported raw encodings: ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` (alpha dropped), ``mono8`` / ``8UC1`` (grey copied to
three channels), ``mono16`` / ``16UC1`` (scaled to 8 bit by ``round(v / 257)``, so ``8-bit * 257`` round-trips exactly;
``is_bigendian`` honoured). Rows may be padded (``step >= width * bytes_per_pixel``). Compressed: JPEG and PNG through
``cv2.imdecode``; the image size is read from the header first, so a decompression bomb is refused before decoding.

:func:`read_image_file` reads an image file (the CLI's inputs) with the same checks; :func:`probe_image_file` runs
the ones that need no decoding.

Every problem raises :class:`ImageDecodeError` (a ``ValueError``) naming the field and the reason.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

#: Largest image accepted by default (pixels): 8192 x 8192.
DEFAULT_MAX_PIXELS = 8192 * 8192


class ImageDecodeError(ValueError):
    """An image message could not be decoded; the message names the field and the problem."""


# encoding -> (channels, bytes per channel, channel order)
_ENCODINGS: dict[str, tuple[int, int, str]] = {
    "rgb8": (3, 1, "rgb"),
    "bgr8": (3, 1, "bgr"),
    "rgba8": (4, 1, "rgba"),
    "bgra8": (4, 1, "bgra"),
    "mono8": (1, 1, "mono"),
    "8UC1": (1, 1, "mono"),
    "mono16": (1, 2, "mono"),
    "16UC1": (1, 2, "mono"),
}

SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


def bytes_per_pixel(encoding: str) -> int:
    """Bytes per pixel of a supported raw ``encoding``; raises :class:`ImageDecodeError` otherwise."""
    try:
        channels, depth, _ = _ENCODINGS[encoding]
    except KeyError:
        raise ImageDecodeError(
            f"encoding: {encoding!r} is not supported (supported: {', '.join(SUPPORTED_ENCODINGS)})") from None
    return channels * depth


def _as_buffer(data: Any) -> np.ndarray:
    """bytes / bytearray / memoryview / array.array('B') / list of ints / uint8 ndarray -> 1-D uint8 view."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype == np.uint8 else np.asarray(data, np.uint8).reshape(-1)
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        raise ImageDecodeError(f"data: expected bytes, got {type(data).__name__}") from None


def _check_size(height: int, width: int, max_pixels: int, what: str) -> None:
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"{what}: zero-size image ({width}x{height})")
    if height * width > max_pixels:
        raise ImageDecodeError(
            f"{what}: image of {width}x{height} = {height * width} pixels exceeds the limit of {max_pixels} pixels")


def decode_image(height: int, width: int, encoding: str, is_bigendian: int | bool, step: int, data: Any,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode the fields of a ``sensor_msgs/Image`` to an ``H×W×3`` uint8 RGB array.

    ``data`` must hold exactly ``step * height`` bytes (REP: ``step`` = full row length in bytes, padding included).
    Raises :class:`ImageDecodeError` for an unsupported encoding, zero or too large a size (``max_pixels``),
    ``step < width * bytes_per_pixel`` or a data size that does not match.
    """
    height, width, step = int(height), int(width), int(step)
    bpp = bytes_per_pixel(encoding)
    _check_size(height, width, max_pixels, "height/width")
    if step < width * bpp:
        raise ImageDecodeError(f"step: {step} bytes is smaller than width*bytes_per_pixel = {width}*{bpp} = "
                               f"{width * bpp} for encoding {encoding!r}")
    buf = _as_buffer(data)
    if buf.size != step * height:
        raise ImageDecodeError(f"data: {buf.size} bytes but step*height = {step}*{height} = {step * height}")
    channels, depth, order = _ENCODINGS[encoding]
    rows = buf.reshape(height, step)[:, : width * bpp]
    if depth == 2:
        grey16 = np.ascontiguousarray(rows).view(">u2" if is_bigendian else "<u2").reshape(height, width)
        # round(v / 257): maps 0..65535 onto 0..255 and inverts the usual 8->16 bit expansion v8 * 257 exactly.
        grey = ((grey16.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    pix = rows.reshape(height, width, channels)
    if order == "mono":
        return np.repeat(pix, 3, axis=2)
    if order in ("bgr", "bgra"):
        return np.ascontiguousarray(pix[:, :, 2::-1])
    return np.ascontiguousarray(pix[:, :, :3])


def encode_image(rgb: np.ndarray, encoding: str = "rgb8", step: int | None = None,
                 is_bigendian: bool = False) -> dict[str, Any]:
    """Inverse of :func:`decode_image` (for tests, bag writing and tools): ``H×W×3`` uint8 RGB -> Image fields.

    Returns ``{"height", "width", "encoding", "is_bigendian", "step", "data"}`` (``data`` is ``bytes``). ``step``
    larger than the packed row length pads each row with zeros. Mono encodings store the Rec.601 luma of the image;
    16-bit ones store ``luma8 * 257``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageDecodeError(f"rgb: expected an HxWx3 uint8 array, got {rgb.shape} {rgb.dtype}")
    bpp = bytes_per_pixel(encoding)
    channels, depth, order = _ENCODINGS[encoding]
    h, w = rgb.shape[:2]
    step = w * bpp if step is None else int(step)
    if step < w * bpp:
        raise ImageDecodeError(f"step: {step} < width*bytes_per_pixel = {w * bpp}")
    if order == "mono":
        luma = np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        luma = np.clip(luma, 0, 255).astype(np.uint8)
        if depth == 2:
            pix = (luma.astype(np.uint16) * 257).astype(">u2" if is_bigendian else "<u2").view(np.uint8)
        else:
            pix = luma
    else:
        pix = rgb[:, :, ::-1] if order.startswith("bgr") else rgb
        if channels == 4:
            pix = np.concatenate([pix, np.full((h, w, 1), 255, np.uint8)], axis=2)
    rows = np.zeros((h, step), np.uint8)
    rows[:, : w * bpp] = np.ascontiguousarray(pix).reshape(h, w * bpp)
    return {"height": h, "width": w, "encoding": encoding, "is_bigendian": int(bool(is_bigendian)), "step": step,
            "data": rows.tobytes()}


# ---------------------------------------------------------------------------------------------------------------------
# Compressed images

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(b: bytes) -> tuple[int, int]:
    """(width, height) from the first SOF marker of a JPEG stream; raises ImageDecodeError if there is none."""
    i = 2
    n = len(b)
    while i + 4 <= n:
        if b[i] != 0xFF:
            raise ImageDecodeError(f"data: corrupt JPEG (no marker at byte {i})")
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", b[i + 2: i + 4])
        if marker in _JPEG_SOF:
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", b[i + 5: i + 9])
            return w, h
        if length < 2:
            raise ImageDecodeError(f"data: corrupt JPEG (segment length {length} at byte {i})")
        i += 2 + length
    raise ImageDecodeError("data: corrupt JPEG (no frame header found)")


def compressed_kind(fmt: str, data: bytes) -> str:
    """``"jpeg"`` or ``"png"`` from the magic bytes, checked against the ``format`` string when it names one."""
    if data[:3] == b"\xff\xd8\xff":
        kind = "jpeg"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        kind = "png"
    else:
        raise ImageDecodeError(f"data: neither a JPEG nor a PNG stream (format {fmt!r}, first bytes {data[:8]!r})")
    f = fmt.lower()
    if "compresseddepth" in f:
        raise ImageDecodeError(f"format: {fmt!r} (depth images) is not a camera image")
    names_jpeg, names_png = ("jpeg" in f or "jpg" in f), ("png" in f)
    if (names_jpeg and not names_png and kind != "jpeg") or (names_png and not names_jpeg and kind != "png"):
        raise ImageDecodeError(f"format: {fmt!r} does not match the data, which is {kind.upper()}")
    return kind


def _compressed_size(kind: str, b: bytes, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` of a JPEG/PNG stream from its header, after the checks that need no decoding: a JPEG
    must end with its end-of-image marker, a PNG must have its IHDR, the size must be within ``max_pixels``."""
    if kind == "jpeg":
        w, h = _jpeg_size(b)
        # libjpeg fills a truncated image with grey and only warns; refuse it instead.
        if not b.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise ImageDecodeError("data: corrupt JPEG (truncated: no end-of-image marker)")
    else:
        if len(b) < 24 or b[12:16] != b"IHDR":
            raise ImageDecodeError("data: corrupt PNG (no IHDR header)")
        w, h = struct.unpack(">II", b[16:24])
    _check_size(h, w, max_pixels, f"{kind} header")
    return w, h


def decode_compressed(fmt: str, data: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode the fields of a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to an ``H×W×3`` uint8 RGB array.

    The size in the stream header is checked against ``max_pixels`` before decoding; a truncated JPEG (no end-of-image
    marker) or a stream OpenCV cannot decode raises :class:`ImageDecodeError`.
    """
    import cv2  # local: the rest of the module needs numpy only

    buf = _as_buffer(data)
    if buf.size == 0:
        raise ImageDecodeError("data: empty compressed image")
    b = buf.tobytes()
    kind = compressed_kind(str(fmt), b)
    w, h = _compressed_size(kind, b, max_pixels)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ImageDecodeError(f"data: corrupt {kind.upper()} (OpenCV could not decode it)")
    if img.shape[:2] != (h, w):
        raise ImageDecodeError(f"data: corrupt {kind.upper()} (header says {w}x{h}, decoded {img.shape[1]}x"
                               f"{img.shape[0]})")
    return np.ascontiguousarray(img[:, :, ::-1])


def probe_image_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """The checks of :func:`read_image_file` that need no decoding (the file exists; a JPEG or PNG has a sound
    header, its end-of-image marker and a size within ``max_pixels``), so a batch can refuse bad files before any
    work. Raises :class:`ImageDecodeError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageDecodeError(f"image {str(path)!r} does not exist")
    data = path.read_bytes()
    kind = "jpeg" if data[:3] == b"\xff\xd8\xff" else "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else None
    if kind is not None:
        try:
            _compressed_size(kind, data, max_pixels)
        except ImageDecodeError as e:
            raise ImageDecodeError(f"image {str(path)!r}: {e}") from None


def read_image_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file → ``H×W×3`` uint8 RGB. JPEG and PNG go through :func:`decode_compressed` (header size and
    truncation checked before decoding); other formats OpenCV reads (TIFF, BMP, ...) through ``cv2.imread``.
    Raises :class:`ImageDecodeError` naming the file when it is missing, corrupt or unsupported."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise ImageDecodeError(f"image {str(path)!r} does not exist")
    data = path.read_bytes()
    if data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n":
        try:
            return decode_compressed(path.suffix, data, max_pixels)
        except ImageDecodeError as e:
            raise ImageDecodeError(f"image {str(path)!r}: {e}") from None
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ImageDecodeError(f"image {str(path)!r} is not a readable image (corrupt or unsupported format)")
    return np.ascontiguousarray(img[:, :, ::-1])


def encode_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> dict[str, Any]:
    """``H×W×3`` uint8 RGB -> CompressedImage fields ``{"format", "data"}`` (JPEG or PNG), for tests and tools."""
    import cv2

    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise ImageDecodeError(f"format: {fmt!r} is not jpeg or png")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == ".jpg" else []
    ok, enc = cv2.imencode(ext, np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1]), params)
    if not ok:
        raise ImageDecodeError(f"could not encode the image as {fmt}")
    return {"format": "jpeg" if ext == ".jpg" else "png", "data": enc.tobytes()}


__all__ = [
    "DEFAULT_MAX_PIXELS", "ImageDecodeError", "SUPPORTED_ENCODINGS", "bytes_per_pixel", "compressed_kind",
    "decode_compressed", "decode_image", "encode_compressed", "encode_image", "probe_image_file", "read_image_file",
]
