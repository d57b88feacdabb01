"""Camera priors stored in a photo: EXIF and XMP (DJI ``drone-dji``, Pix4D ``Camera``) → localize priors.

:func:`read_photo_metadata` reads a JPEG/PNG/TIFF header (no pixel decoding) into a :class:`PhotoMetadata`: the
stored image size, the EXIF orientation, make/model/time, the EXIF focal tags, and the XMP properties of the known
namespaces. :func:`metadata_priors` turns them into :class:`mobilegeo_ros.localizer.Priors` values in this project's
conventions, each with its source label, or with the error that makes it unusable (a malformed or impossible value).
A problem is reported per field and only matters when that prior is used (a ``--priors`` CSV may override it).

Tags read, in order of preference (source label in brackets):

* Attitude ``yaw_deg``/``pitch_deg``/``roll_deg``:
  - ``drone-dji:GimbalYawDegree``, ``GimbalPitchDegree``, ``GimbalRollDegree`` [``xmp:drone-dji``]: the gimbal's
    attitude in the local North-East-Down frame (DJI writes absolute angles, not relative to the aircraft), Euler
    angles yaw ψ (clockwise from north) → pitch θ (0 = horizontal, -90 = straight down) → roll φ of the camera
    body frame x = optical axis, y = image right, z = image down. It is converted exactly through the rotation matrix
    (:func:`dji_gimbal_rotation`, :func:`mobilegeo_ros.geo.render.attitude_from_rotation`); for a camera without
    roll that is ``yaw = ψ`` (the image top points where the camera looks), ``pitch = θ + 90`` (0 = nadir, > 0 tilted
    towards the image top), ``roll = 0``. ``FlightYawDegree`` (the aircraft body) is not used.
  - ``Camera:Yaw``, ``Camera:Pitch``, ``Camera:Roll`` (Pix4D's camera namespace ``http://pix4d.com/camera/1.0/``)
    [``xmp:camera``]: yaw = compass heading of the image top, pitch 0 = nadir, 90 = looking forward, as
    OpenDroneMap reads them; taken as this project's yaw/pitch/roll directly.
* Altitude above ground ``altitude_m``: ``drone-dji:RelativeAltitude`` [``xmp:drone-dji``], the height above the
  take-off point: it is the height above the ground where the ground is as high as the take-off point (flat
  terrain); give ``altitude_m`` in the CSV where it is not.
* Horizontal field of view ``hfov_deg`` of the image as decoded (EXIF orientation applied):
  - ``drone-dji:CalibratedFocalLength`` (pixels) with ``CalibratedOpticalCenterX/Y`` [``xmp:drone-dji``]: the
    calibration is for the full sensor frame, whose size is taken as twice the optical centre (``2·cx × 2·cy``,
    e.g. 5472 × 3078 on a Phantom 4 Pro in 16:9). A stored image of the same aspect ratio (within 1 %) is that frame
    resized: the focal length in pixels is scaled by ``stored width / 2·cx``. A stored image of another aspect ratio
    is a crop: cropping keeps the focal length in pixels, so it is used as is (no resampling assumed; a crop that was
    also resized needs ``hfov_deg`` in the CSV). The note is reported with the prior.
  - EXIF ``FocalLengthIn35mmFilm`` [``exif``]: ``hfov = 2·atan(36 mm / (2·f35))`` across the stored width (36 mm
    film width, as DJI and OpenDroneMap use it; a cropped photo without calibration tags gets the full frame's
    field of view).
  - EXIF ``FocalLength`` (mm) with ``FocalPlaneXResolution``/``FocalPlaneResolutionUnit`` [``exif``]: focal length
    in pixels = focal length × pixels per mm on the focal plane.

The EXIF orientation (1..8) is applied: the image the localizer sees is decoded upright (OpenCV applies it), so the
attitude is turned about the optical axis with it and the field of view is across the decoded width. Mirrored
orientations (2, 4, 5, 7) make the metadata attitude unusable (a camera does not mirror).

The photo's own GPS tags are read (``recorded_lat``/``recorded_lon``) for the report only: they are what this tool
replaces (jammed or missing GNSS), never a prior.
"""

from __future__ import annotations

import math
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: XMP namespaces read, by their usual prefix.
XMP_NAMESPACES = {"drone-dji": "http://www.dji.com/drone-dji/1.0/", "Camera": "http://pix4d.com/camera/1.0/"}
#: EXIF tag ids (EXIF 2.32) read from IFD0, the Exif IFD and the GPS IFD.
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
EXIF_TAGS = {"Make": 0x010F, "Model": 0x0110, "Orientation": 0x0112, "DateTimeOriginal": 0x9003,
             "FocalLength": 0x920A, "FocalLengthIn35mmFilm": 0xA405, "FocalPlaneXResolution": 0xA20E,
             "FocalPlaneResolutionUnit": 0xA210}
#: Millimetres per EXIF FocalPlaneResolutionUnit (2 inch, 3 cm, 4 mm, 5 µm).
_MM_PER_UNIT = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
#: Relative difference of aspect ratios under which a stored image is the calibrated frame resized (not cropped).
RESIZE_ASPECT_TOLERANCE = 0.01

DJI, PIX4D, EXIF = "xmp:drone-dji", "xmp:camera", "exif"
#: Converted angles are rounded to 1e-9 degrees (the float noise of the rotation matrices, not a measurement).
ANGLE_DECIMALS = 9


class MetadataError(ValueError):
    """A photo's header cannot be read at all (not an image); field problems are in ``PhotoMetadata.errors``."""


@dataclass
class PhotoMetadata:
    """What a photo's header says. ``width_px``/``height_px``: the stored pixel grid (before the EXIF orientation);
    ``exif``: the :data:`EXIF_TAGS` present, as numbers or strings; ``xmp``: ``"prefix:Name" -> text`` for the
    :data:`XMP_NAMESPACES` properties; ``errors``: field name (``"XMP"``, ``"EXIF"``, ``"EXIF FocalLength"``, ...)
    → why it cannot be read."""

    path: Path
    width_px: int
    height_px: int
    orientation: int = 1
    make: str = ""
    model: str = ""
    time: str | None = None  # EXIF DateTimeOriginal as ISO 8601 (local time of the camera, no zone)
    recorded_lat: float | None = None  # the photo's own GPS position (degrees), for the report only
    recorded_lon: float | None = None
    exif: dict[str, float | str] = field(default_factory=dict)
    xmp: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def decoded_size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels of the image as decoded upright (orientations 5-8 swap them)."""
        return (self.height_px, self.width_px) if self.orientation in (5, 6, 7, 8) else (self.width_px,
                                                                                         self.height_px)


@dataclass(frozen=True)
class PriorValue:
    """One prior from one source: its value (degrees, metres) or, when unusable, ``error`` (one line, naming the
    file and the field) and ``value`` None. ``note``: how it was derived when that is worth reporting."""

    value: float | None
    source: str
    error: str = ""
    note: str = ""


# -- reading -----------------------------------------------------------------------------------------------------------
def read_photo_metadata(path: str | Path) -> PhotoMetadata:
    """The EXIF/XMP header of an image file (JPEG, PNG, TIFF; no pixel decoding).

    Raises:
        MetadataError: the file is missing or is not an image (one line naming the file).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore")  # (Pillow warns about odd EXIF; what matters is reported per field)
            meta = PhotoMetadata(path, int(im.size[0]), int(im.size[1]))
            _read_exif(im, meta)
            xmp = im.info.get("xmp") if "xmp" in im.info else im.info.get("XML:com.adobe.xmp")
    except FileNotFoundError:
        raise MetadataError(f"image {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MetadataError(f"image {str(path)!r} is not a readable image ({e})") from None
    if xmp:
        _read_xmp(xmp, meta)
    return meta


def _read_exif(im, meta: PhotoMetadata) -> None:
    try:
        exif = im.getexif()
        sub = exif.get_ifd(EXIF_IFD)
        gps = exif.get_ifd(GPS_IFD)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on a corrupt TIFF structure
        meta.errors["EXIF"] = f"EXIF: unreadable ({type(e).__name__}: {e})"
        return
    for name, tag in EXIF_TAGS.items():
        value = exif.get(tag, sub.get(tag))
        if value is None:
            continue
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str):
            value = value.strip("\x00 ")
            if not value:
                continue
        else:
            try:
                value = float(value)
            except (TypeError, ValueError, ZeroDivisionError):
                meta.errors[f"EXIF {name}"] = f"EXIF {name} {value!r}: not a number"
                continue
            if not math.isfinite(value):
                meta.errors[f"EXIF {name}"] = f"EXIF {name} {value!r}: not a finite number"
                continue
        meta.exif[name] = value
    meta.make, meta.model = str(meta.exif.get("Make", "")), str(meta.exif.get("Model", ""))
    if "Orientation" in meta.exif:
        o = meta.exif["Orientation"]
        if isinstance(o, float) and o in (1, 2, 3, 4, 5, 6, 7, 8):
            meta.orientation = int(o)
        else:
            meta.errors["EXIF Orientation"] = f"EXIF Orientation {o!r}: not one of 1..8"
    t = meta.exif.get("DateTimeOriginal")
    if isinstance(t, str) and re.fullmatch(r"\d{4}:\d\d:\d\d \d\d:\d\d:\d\d", t):
        meta.time = t[:10].replace(":", "-") + "T" + t[11:]
    meta.recorded_lat = _gps_degrees(gps.get(2), gps.get(1), "S")
    meta.recorded_lon = _gps_degrees(gps.get(4), gps.get(3), "W")


def _gps_degrees(dms, ref, negative: str) -> float | None:
    try:
        d, m, s = (float(v) for v in dms)
        value = d + m / 60.0 + s / 3600.0
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    if not math.isfinite(value):
        return None
    return -value if str(ref).strip("\x00 ").upper() == negative else value


def _read_xmp(packet: bytes | str, meta: PhotoMetadata) -> None:
    """The :data:`XMP_NAMESPACES` properties of an XMP packet (attributes of ``rdf:Description`` or simple child
    elements) into ``meta.xmp``; a packet that is not well-formed XML → ``meta.errors["XMP"]``."""
    text = packet.decode("utf-8", "replace") if isinstance(packet, bytes) else packet
    if re.search(r"<!(DOCTYPE|ENTITY)", text):  # XMP has no DTD; refuse entity expansion outright
        meta.errors["XMP"] = "XMP: DOCTYPE/ENTITY declarations are not allowed in an XMP packet"
        return
    start, end = text.find("<x:xmpmeta"), text.rfind("</x:xmpmeta>")
    body = text[start:end + len("</x:xmpmeta>")] if 0 <= start < end else text.strip("\x00 \r\n\t")
    body = re.sub(r"^<\?xpacket[^>]*\?>|<\?xpacket[^>]*\?>\s*$", "", body.strip())
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        meta.errors["XMP"] = f"XMP: not well-formed XML ({e})"
        return
    prefixes = {uri: prefix for prefix, uri in XMP_NAMESPACES.items()}
    for element in root.iter():
        for key, value in element.attrib.items():
            _keep_xmp(meta, prefixes, key, value)
        if len(element) == 0 and element.text is not None:
            _keep_xmp(meta, prefixes, element.tag, element.text)


def _keep_xmp(meta: PhotoMetadata, prefixes: dict[str, str], qualified: str, value: str) -> None:
    if not qualified.startswith("{"):
        return
    uri, _, local = qualified[1:].partition("}")
    if uri in prefixes:
        meta.xmp.setdefault(f"{prefixes[uri]}:{local}", value.strip())


# -- conventions ---------------------------------------------------------------------------------------------------
def dji_gimbal_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """3×3 camera-to-ENU rotation (columns: image right, image down, optical axis, as
    :func:`mobilegeo_ros.geo.render.camera_rotation`) of a DJI gimbal attitude: aerospace Euler angles
    ``R_NED = Rz(yaw) @ Ry(pitch) @ Rx(roll)`` of the body frame x = optical axis, y = image right, z = image down
    (pitch -90 = straight down), then North-East-Down → East-North-Up."""
    psi, th, ph = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    rz = np.array([[math.cos(psi), -math.sin(psi), 0.0], [math.sin(psi), math.cos(psi), 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[math.cos(th), 0.0, math.sin(th)], [0.0, 1.0, 0.0], [-math.sin(th), 0.0, math.cos(th)]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(ph), -math.sin(ph)], [0.0, math.sin(ph), math.cos(ph)]])
    camera_in_body = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # columns x_cam, y_cam, z_cam
    ned_to_enu = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    return ned_to_enu @ rz @ ry @ rx @ camera_in_body


#: Camera axes of the upright (decoded) image in the stored image's camera frame, per EXIF orientation: columns
#: image right, image down, optical axis. 3: turned 180°; 6: turned 90° clockwise to display (the stored left edge
#: is the top); 8: turned 90° counter-clockwise (the stored right edge is the top).
_UPRIGHT_AXES = {1: np.eye(3), 3: np.diag([-1.0, -1.0, 1.0]),
                 6: np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
                 8: np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])}


def _number(meta: PhotoMetadata, key: str) -> tuple[float | None, str]:
    """An XMP property as a number: ``(value, "")``, ``(None, "")`` when absent, ``(None, error)`` when malformed."""
    if "XMP" in meta.errors and key not in meta.xmp:
        return None, ""
    text = meta.xmp.get(key)
    if text is None:
        return None, ""
    try:
        value = float(text)
    except ValueError:
        return None, f"XMP {key} {text!r}: not a number"
    if not math.isfinite(value):
        return None, f"XMP {key} {text!r}: not a finite number"
    return value, ""


def metadata_priors(meta: PhotoMetadata) -> dict[str, PriorValue]:
    """The priors a photo's metadata gives (see the module docstring), keyed by :class:`Priors` field name. A prior
    the metadata tried to give but cannot (malformed or impossible value) has its ``error``; absent ones are left
    out."""
    from mobilegeo_ros.localizer import prior_range_error

    out: dict[str, PriorValue] = {}
    name = str(meta.path)

    def fail(prior: str, source: str, why: str) -> None:
        out[prior] = PriorValue(None, source, f"{name}: {why}")

    def put(prior: str, value: float, source: str, field_name: str, note: str = "") -> None:
        why = prior_range_error(prior, value)
        if why:
            fail(prior, source, f"{field_name} gives {prior} {value:g}: {why}")
        else:
            out[prior] = PriorValue(float(value), source, note=note)

    if "XMP" in meta.errors:  # nothing from XMP can be trusted; every XMP-derived prior carries the error
        for prior in ("yaw_deg", "pitch_deg", "roll_deg", "altitude_m", "hfov_deg"):
            fail(prior, "xmp", meta.errors["XMP"])

    _attitude(meta, put, fail)
    # altitude above ground
    if "altitude_m" not in out:
        alt, err = _number(meta, "drone-dji:RelativeAltitude")
        if err:
            fail("altitude_m", DJI, err)
        elif alt is not None:
            put("altitude_m", alt, DJI, "XMP drone-dji:RelativeAltitude",
                note="height above the take-off point (flat terrain assumed)")

    # field of view
    if "hfov_deg" not in out:
        hfov = _field_of_view(meta)
        if hfov is not None:
            out["hfov_deg"] = hfov
    return out


#: Attitude tags per source: (source, yaw, pitch, roll keys, pitch convention: True = DJI gimbal Euler angles).
_ATTITUDE_TAGS = (
    (DJI, "drone-dji:GimbalYawDegree", "drone-dji:GimbalPitchDegree", "drone-dji:GimbalRollDegree", True),
    (PIX4D, "Camera:Yaw", "Camera:Pitch", "Camera:Roll", False),
)


def _attitude(meta: PhotoMetadata, put, fail) -> None:
    """yaw/pitch/roll priors of the decoded image from the first source of :data:`_ATTITUDE_TAGS` with a pitch,
    through ``put(prior, value, source, field)`` / ``fail(prior, source, why)`` (see :func:`metadata_priors`)."""
    from mobilegeo_ros.geo.render import attitude_from_rotation

    attitude = ("yaw_deg", "pitch_deg", "roll_deg")
    for source, kyaw, kpitch, kroll, dji in _ATTITUDE_TAGS:
        values = [_number(meta, k) for k in (kyaw, kpitch, kroll)]
        errors = [e for _, e in values if e]
        if errors:
            for prior in attitude:
                fail(prior, source, errors[0])
            return
        yaw, pitch, roll = (v for v, _ in values)
        if pitch is None:
            continue
        if meta.orientation not in _UPRIGHT_AXES:
            why = meta.errors.get("EXIF Orientation") or (
                f"EXIF Orientation {meta.orientation} (mirrored image): the camera attitude does not apply to it")
            for prior in attitude:
                fail(prior, source, why)
            return
        to_world = dji_gimbal_rotation if dji else _project_rotation
        rot = to_world(yaw or 0.0, pitch, roll or 0.0) @ _UPRIGHT_AXES[meta.orientation]
        if not rot[2, 2] < -1e-6 or abs(rot[2, 1]) > 1.0 - 1e-9:  # optical axis not below the horizon
            for prior in attitude:
                fail(prior, source, f"XMP {kpitch} {pitch:g}: the camera looks at or above the horizon")
            return
        y, p, r = (round(a, ANGLE_DECIMALS) for a in attitude_from_rotation(rot))
        if yaw is not None:  # (pitch and roll do not depend on the yaw: it turns about the vertical)
            put("yaw_deg", y, source, f"XMP {kyaw}")
        put("pitch_deg", p, source, f"XMP {kpitch}")
        if roll is not None or meta.orientation != 1:
            put("roll_deg", r, source, f"XMP {kroll}")
        return


def _project_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    from mobilegeo_ros.geo.render import CameraPose, camera_rotation

    return camera_rotation(CameraPose(0.0, 0.0, 1.0, yaw, pitch, roll))


def _field_of_view(meta: PhotoMetadata) -> PriorValue | None:
    """``hfov_deg`` of the decoded image from the calibrated focal length, the 35 mm equivalent or the focal plane
    resolution (module docstring), or None when the photo says nothing about it."""
    from mobilegeo_ros.localizer import prior_range_error

    name = str(meta.path)
    decoded_width = meta.decoded_size[0]
    focal_px, source, note, field_name = None, "", "", ""
    f_cal, err = _number(meta, "drone-dji:CalibratedFocalLength")
    if err:
        return PriorValue(None, DJI, f"{name}: {err}")
    if f_cal is not None:
        (cx, ex), (cy, ey) = (_number(meta, "drone-dji:CalibratedOpticalCenterX"),
                              _number(meta, "drone-dji:CalibratedOpticalCenterY"))
        if ex or ey:
            return PriorValue(None, DJI, f"{name}: {ex or ey}")
        source, field_name = DJI, "XMP drone-dji:CalibratedFocalLength"
        if f_cal <= 0:
            return PriorValue(None, DJI, f"{name}: XMP drone-dji:CalibratedFocalLength {f_cal:g}: not positive")
        if cx is None or cy is None or cx <= 0 or cy <= 0:
            focal_px, note = f_cal, "calibrated frame size unknown: the stored image taken as the calibrated frame"
        else:
            full_w, full_h = 2.0 * cx, 2.0 * cy
            aspect_change = (meta.width_px / meta.height_px) / (full_w / full_h) - 1.0
            if abs(aspect_change) <= RESIZE_ASPECT_TOLERANCE:
                focal_px = f_cal * meta.width_px / full_w
                if abs(meta.width_px - full_w) > 0.5:
                    note = (f"calibrated for the {full_w:.0f}×{full_h:.0f} frame; resized to {meta.width_px} px wide: "
                            f"focal length scaled by {meta.width_px / full_w:.4g}")
            else:
                focal_px = f_cal
                note = (f"crop of the calibrated {full_w:.0f}×{full_h:.0f} frame ({meta.width_px}×{meta.height_px}, "
                        "other aspect ratio): focal length in pixels kept (no resampling assumed)")
    else:
        f35 = meta.exif.get("FocalLengthIn35mmFilm")
        f_mm = meta.exif.get("FocalLength")
        xres, unit = meta.exif.get("FocalPlaneXResolution"), meta.exif.get("FocalPlaneResolutionUnit")
        if isinstance(f35, float) and f35 > 0:
            focal_px, source, field_name = meta.width_px * f35 / 36.0, EXIF, "EXIF FocalLengthIn35mmFilm"
        elif (isinstance(f_mm, float) and f_mm > 0 and isinstance(xres, float) and xres > 0
              and unit in _MM_PER_UNIT):
            focal_px, source, field_name = f_mm * xres / _MM_PER_UNIT[unit], EXIF, "EXIF FocalLength"
        else:
            for key in ("FocalLengthIn35mmFilm", "FocalLength", "FocalPlaneXResolution"):
                if f"EXIF {key}" in meta.errors:
                    return PriorValue(None, EXIF, f"{name}: {meta.errors[f'EXIF {key}']}")
            return None
    hfov = math.degrees(2.0 * math.atan(decoded_width / (2.0 * focal_px)))
    why = prior_range_error("hfov_deg", hfov)
    if why:
        return PriorValue(None, source, f"{name}: {field_name} gives hfov_deg {hfov:g}: {why}")
    return PriorValue(hfov, source, note=note)


__all__ = ["DJI", "EXIF", "PIX4D", "MetadataError", "PhotoMetadata", "PriorValue", "XMP_NAMESPACES",
           "dji_gimbal_rotation", "metadata_priors", "read_photo_metadata"]
