"""Test photos with camera metadata: JPEG bytes with an injected EXIF block and DJI-style XMP packet, and the real
DJI Phantom 4 Pro photo of test/data (see test/data/README.md)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

DATA = Path(__file__).resolve().parent / "data"
#: A real DJI Phantom 4 Pro (FC6310) photo, cropped to 1058×997 px, with its original EXIF and XMP.
DJI_PHOTO = DATA / "AWPE Pigeon Lake 2020 DJI_0005.JPG"

XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"


def dji_xmp(properties: dict[str, object], as_elements: bool = False) -> bytes:
    """An XMP packet with ``drone-dji:`` properties, written as attributes of ``rdf:Description`` (as DJI does) or
    as child elements (also valid RDF)."""
    if as_elements:
        attrs = ""
        children = "".join(f"<drone-dji:{k}>{v}</drone-dji:{k}>" for k, v in properties.items())
    else:
        attrs = " ".join(f'drone-dji:{k}="{v}"' for k, v in properties.items())
        children = ""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?> <x:xmpmeta xmlns:x="adobe:ns:meta/"> '
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"> '
        f'<rdf:Description rdf:about="" xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/" {attrs}>{children}'
        '</rdf:Description> </rdf:RDF> </x:xmpmeta> <?xpacket end="w"?>'
    ).encode("utf-8")


def exif_block(tags: dict[int, object] | None = None, exif_ifd: dict[int, object] | None = None) -> bytes:
    """An APP1 EXIF payload (``Exif\\0\\0`` + TIFF) with IFD0 ``tags`` and Exif-IFD ``exif_ifd`` (Pillow)."""
    from PIL import Image

    exif = Image.Exif()
    for tag, value in (tags or {}).items():
        exif[tag] = value
    sub = exif.get_ifd(0x8769)
    for tag, value in (exif_ifd or {}).items():
        sub[tag] = value
    return exif.tobytes()


def jpeg_with_metadata(rgb: np.ndarray, xmp: bytes | None = None, exif: bytes | None = None,
                       quality: int = 95) -> bytes:
    """JPEG bytes of an ``H×W×3`` uint8 RGB image with APP1 segments for ``exif`` and ``xmp`` right after SOI."""
    ok, enc = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    data = enc.tobytes()
    segments = b""
    for payload in ([exif] if exif else []) + ([XMP_HEADER + xmp] if xmp else []):
        segments += b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return data[:2] + segments + data[2:]


def dji_properties(yaw_deg: float, tilt_deg: float, altitude_m: float, width_px: int, height_px: int,
                   hfov_deg: float, frame_scale: float = 1.0) -> dict[str, str]:
    """The DJI XMP properties of a camera with this project's attitude (yaw, tilt = pitch from nadir, no roll),
    height and field of view, calibrated on a frame ``frame_scale`` times the image size (a resized photo)."""
    focal_px = (width_px / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return {"RelativeAltitude": f"{altitude_m:+.2f}", "GimbalYawDegree": f"{yaw_deg:+.2f}",
            "GimbalPitchDegree": f"{tilt_deg - 90.0:+.2f}", "GimbalRollDegree": "+0.00",
            "FlightYawDegree": f"{yaw_deg:+.2f}", "CalibratedFocalLength": f"{focal_px * frame_scale:.6f}",
            "CalibratedOpticalCenterX": f"{width_px * frame_scale / 2.0:.6f}",
            "CalibratedOpticalCenterY": f"{height_px * frame_scale / 2.0:.6f}"}
