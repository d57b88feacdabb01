"""Geotagging results a GIS or photogrammetry tool reads: GeoJSON, CSV, and photo copies with EXIF GPS tags.

* GeoJSON (:func:`write_geojson`, RFC 7946: WGS84, ``[lon, lat]`` order, no ``crs`` member): a FeatureCollection
  with, per located photo, a ``Point`` feature (``"feature": "position"``: the drone's nadir point) and, when the
  altitude and the field of view are known, a ``Polygon`` feature (``"feature": "footprint"``: the image's ground
  footprint, exterior ring counter-clockwise and closed). Both carry the photo's full attributes
  (:meth:`mobilegeo_ros.geotag.PhotoFix.properties`: status, sigma_m, heading_deg, prior values and sources, ...), so
  either layer stands on its own; QGIS and GDAL open the file as a point layer and a polygon layer. Photos without a
  position (no fix, input error) are left out: every GIS tool accepts the file, and the CSV lists them.
* CSV (:func:`write_csv`): one row per photo, every photo (no-fix and error rows included, with their reason), the
  attribute columns plus ``footprint_wkt`` (``POLYGON((lon lat, ...))``, WGS84).
* Geotagged copies (:func:`write_geotagged_copy`): the photo's bytes with its EXIF GPS directory replaced, written
  under another name; the original is never opened for writing. The JPEG's compressed image data, its other EXIF
  tags and its other segments (XMP, ICC, ...) are kept byte for byte (no re-encoding). GPS tags written (EXIF 2.32):
  GPSVersionID 2.3.0.0, GPSLatitude/Ref, GPSLongitude/Ref (degrees, minutes, seconds as rationals: seconds to
  1e-5″, 0.3 mm), GPSMapDatum ``WGS-84``, GPSHPositioningError (the 1-sigma, metres), GPSImgDirection/Ref (true
  heading of the image top, when known) and GPSProcessingMethod; the photo's own GPSAltitude/Ref are kept (this
  tool estimates no height above sea level). DJI's XMP position properties (``drone-dji:Latitude``/``Longitude``,
  ``GpsLatitude``/``GpsLongitude``/``GpsLongtitude``), which some photogrammetry tools prefer to EXIF, are set to
  the same position.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mobilegeo_ros.util.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from mobilegeo_ros.geotag import PhotoFix

#: Output formats by file name suffix.
OUTPUT_FORMATS = {".geojson": "geojson", ".json": "geojson", ".csv": "csv"}
#: Decimal places of WGS84 degrees in GeoJSON/CSV (1e-8 degrees ≈ 1 mm).
COORDINATE_DECIMALS = 8
GPS_IFD = 0x8825
#: Seconds of arc are written as rationals with this denominator.
ARCSEC_DENOMINATOR = 100_000
PROCESSING_METHOD = b"ASCII\x00\x00\x00mobilegeo visual localization"
_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_EXIF_HEADER = b"Exif\x00\x00"
_DJI_XMP_POSITION = {"Latitude": "lat", "GpsLatitude": "lat", "Longitude": "lon", "GpsLongitude": "lon",
                     "GpsLongtitude": "lon"}


class OutputError(ValueError):
    """An output cannot be written (one line naming the file)."""


def output_format(path: str | Path) -> str:
    """``"geojson"`` or ``"csv"`` from the file name; OutputError for another suffix."""
    fmt = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise OutputError(f"--out {str(path)!r}: unknown format (use a .geojson, .json or .csv file name)")
    return fmt


def _round(value: float) -> float:
    return round(float(value), COORDINATE_DECIMALS)


def footprint_ring(corners: Sequence[tuple[float, float]]) -> list[list[float]]:
    """The closed, counter-clockwise (RFC 7946 §3.1.6) ring of a footprint's ``(lon, lat)`` corners."""
    ring = [[_round(lon), _round(lat)] for lon, lat in corners]
    twice_area = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:] + ring[:1]))
    if twice_area < 0:
        ring.reverse()
    return ring + [list(ring[0])]


def geojson_features(fixes: Sequence[PhotoFix]) -> dict:
    """The GeoJSON FeatureCollection (module docstring) of the located photos."""
    features = []
    for fix in fixes:
        if not fix.is_fix:
            continue
        props = fix.properties()
        features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [_round(fix.lon),
                                                                                        _round(fix.lat)]},
                         "properties": {"feature": "position", **props}})
        if fix.footprint_lonlat:
            features.append({"type": "Feature",
                             "geometry": {"type": "Polygon", "coordinates": [footprint_ring(fix.footprint_lonlat)]},
                             "properties": {"feature": "footprint", **props}})
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, fixes: Sequence[PhotoFix]) -> Path:
    """Write :func:`geojson_features` to ``path`` (UTF-8, one feature per line, atomically)."""
    features = geojson_features(fixes)["features"]
    lines = ",\n".join(json.dumps(f, ensure_ascii=False, allow_nan=False) for f in features)
    atomic_write_text(path, '{"type": "FeatureCollection", "features": [\n' + lines + "\n]}\n")
    return Path(path)


def footprint_wkt(corners: Sequence[tuple[float, float]] | None) -> str:
    """``POLYGON((lon lat, ...))`` of a footprint (closed, counter-clockwise), "" when None."""
    if not corners:
        return ""
    return "POLYGON((" + ", ".join(f"{lon:.{COORDINATE_DECIMALS}f} {lat:.{COORDINATE_DECIMALS}f}"
                                   for lon, lat in footprint_ring(corners)) + "))"


def write_csv(path: str | Path, fixes: Sequence[PhotoFix]) -> Path:
    """One row per photo (:meth:`PhotoFix.properties` columns + ``footprint_wkt``; empty cells for unknowns)."""
    from mobilegeo_ros.geotag import PROPERTY_NAMES

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*PROPERTY_NAMES, "footprint_wkt"])
    for fix in fixes:
        props = fix.properties()
        for key in ("lat", "lon"):
            if props[key] is not None:
                props[key] = _round(props[key])
        writer.writerow(["" if props[k] is None else props[k] for k in PROPERTY_NAMES]
                        + [footprint_wkt(fix.footprint_lonlat)])
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def write_outputs(paths: Sequence[str | Path], fixes: Sequence[PhotoFix]) -> list[Path]:
    """Write each of ``paths`` in the format its suffix names (:func:`output_format`)."""
    writers = {"geojson": write_geojson, "csv": write_csv}
    return [writers[output_format(p)](p, fixes) for p in paths]


# -- EXIF GPS write-back ---------------------------------------------------------------------------------------------
def jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The marker segments of a JPEG before its image data: ``([(marker, payload), ...], offset of the SOS marker)``
    (``payload`` without the length field). Raises OutputError for a file that is not a JPEG or is truncated."""
    if data[:2] != b"\xff\xd8":
        raise OutputError("not a JPEG file (no SOI marker)")
    segments, pos = [], 2
    while True:
        while pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise OutputError(f"corrupt JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the image data follows
            return segments, pos
        if marker in (0x01, *range(0xD0, 0xD8)):
            segments.append((marker, b""))
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > len(data):
            raise OutputError(f"corrupt JPEG: segment 0x{marker:02X} at byte {pos} runs past the end")
        segments.append((marker, data[pos + 4:pos + 2 + length]))
        pos += 2 + length


def _dms(value_deg: float) -> tuple:
    """|degrees| → (degrees, minutes, seconds) EXIF rationals, seconds to 1/:data:`ARCSEC_DENOMINATOR`."""
    from PIL.TiffImagePlugin import IFDRational

    units = round(abs(value_deg) * 3600 * ARCSEC_DENOMINATOR)
    degrees, rest = divmod(units, 3600 * ARCSEC_DENOMINATOR)
    minutes, seconds = divmod(rest, 60 * ARCSEC_DENOMINATOR)
    return IFDRational(degrees, 1), IFDRational(minutes, 1), IFDRational(seconds, ARCSEC_DENOMINATOR)


def gps_exif(existing_app1: bytes | None, lat: float, lon: float, sigma_m: float | None,
             heading_deg: float | None) -> bytes:
    """An APP1 ``Exif`` payload: the existing one (if any) with its GPS directory replaced by the fix (module
    docstring); every other directory and tag is kept."""
    from PIL import Image
    from PIL.TiffImagePlugin import IFDRational

    exif = Image.Exif()
    if existing_app1:
        exif.load(existing_app1)
    gps = exif.get_ifd(GPS_IFD)
    kept = {tag: gps[tag] for tag in (5, 6) if tag in gps}  # GPSAltitudeRef, GPSAltitude
    gps.clear()
    gps.update({0: b"\x02\x03\x00\x00", 1: "N" if lat >= 0 else "S", 2: _dms(lat), 3: "E" if lon >= 0 else "W",
                4: _dms(lon), 18: "WGS-84", 27: PROCESSING_METHOD, **kept})
    if sigma_m is not None and math.isfinite(sigma_m):
        gps[31] = IFDRational(round(sigma_m * 100), 100)  # GPSHPositioningError, metres
    if heading_deg is not None and math.isfinite(heading_deg):
        gps[16], gps[17] = "T", IFDRational(round((heading_deg % 360.0) * 100) % 36000, 100)
    return exif.tobytes()


def _xmp_with_position(payload: bytes, lat: float, lon: float) -> bytes:
    """An XMP APP1 payload with DJI's position properties (attribute or element form) set to ``lat``/``lon``."""
    text = payload[len(_XMP_HEADER):].decode("utf-8", "replace")
    values = {"lat": f"{lat:+.9f}", "lon": f"{lon:+.9f}"}
    for name, which in _DJI_XMP_POSITION.items():
        text = re.sub(rf'(drone-dji:{name}\s*=\s*)(["\'])[^"\']*\2', rf"\g<1>\g<2>{values[which]}\g<2>", text)
        text = re.sub(rf"(<drone-dji:{name}>)[^<]*(</drone-dji:{name}>)", rf"\g<1>{values[which]}\g<2>", text)
    return _XMP_HEADER + text.encode("utf-8")


def write_geotagged_copy(src: str | Path, dst: str | Path, lat: float, lon: float, sigma_m: float | None = None,
                         heading_deg: float | None = None) -> Path:
    """Write a copy of the JPEG ``src`` at ``dst`` with the fix in its EXIF GPS tags (module docstring); ``src`` is
    only read. Raises OutputError (naming the file) for a non-JPEG, a corrupt one, an EXIF block that no longer fits
    its segment, or ``dst`` being ``src``."""
    src, dst = Path(src), Path(dst)
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise OutputError(f"{src}: no position to write")
    if dst.exists() and dst.resolve() == src.resolve():
        raise OutputError(f"{src}: the geotagged copy would overwrite the original")
    data = src.read_bytes()
    try:
        segments, sos = jpeg_segments(data)
    except OutputError as e:
        raise OutputError(f"{src}: {e}") from None
    exif_at = next((i for i, (m, p) in enumerate(segments) if m == 0xE1 and p.startswith(_EXIF_HEADER)), None)
    exif = gps_exif(segments[exif_at][1] if exif_at is not None else None, lat, lon, sigma_m, heading_deg)
    if len(exif) > 0xFFFF - 2:
        raise OutputError(f"{src}: the EXIF block with GPS tags is {len(exif)} bytes, more than a JPEG segment holds")
    if exif_at is not None:
        segments[exif_at] = (0xE1, exif)
    else:  # after a JFIF APP0, else first
        at = 1 if segments and segments[0][0] == 0xE0 else 0
        segments.insert(at, (0xE1, exif))
    segments = [(m, _xmp_with_position(p, lat, lon)) if m == 0xE1 and p.startswith(_XMP_HEADER) else (m, p)
                for m, p in segments]
    out = bytearray(b"\xff\xd8")
    for marker, payload in segments:
        out += bytes((0xFF, marker))
        if not (marker == 0x01 or 0xD0 <= marker <= 0xD7):
            if len(payload) > 0xFFFF - 2:
                raise OutputError(f"{src}: segment 0x{marker:02X} of {len(payload)} bytes does not fit")
            out += (len(payload) + 2).to_bytes(2, "big") + payload
    out += data[sos:]
    atomic_write_bytes(dst, bytes(out))
    return dst


__all__ = ["OUTPUT_FORMATS", "OutputError", "footprint_ring", "footprint_wkt", "geojson_features", "gps_exif",
           "jpeg_segments", "output_format", "write_csv", "write_geojson", "write_geotagged_copy", "write_outputs"]
