"""GIS outputs of geotagging: EXIF GPS write-back into copies (the real DJI photo and synthetic ones), footprint
rings, output formats."""

import hashlib
import shutil

import cv2
import numpy as np
import pytest
from photo_fixtures import DJI_PHOTO, dji_xmp, jpeg_with_metadata
from PIL import Image

from mobilegeo_ros.io.gis_outputs import (
    ARCSEC_DENOMINATOR, OutputError, footprint_ring, footprint_wkt, output_format, write_geotagged_copy,
)
from mobilegeo_ros.io.photo_metadata import read_photo_metadata

#: EXIF seconds of arc are rationals with denominator 1e5: 1e-5″ in degrees (half of it is the rounding bound).
RATIONAL_DEG = 1.0 / ARCSEC_DENOMINATOR / 3600.0


def gps_tags(path):
    return dict(Image.open(path).getexif().get_ifd(0x8825))


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_geotagged_copy_of_the_dji_photo(tmp_path):
    src = tmp_path / DJI_PHOTO.name
    shutil.copyfile(DJI_PHOTO, src)
    before = sha256(src)
    lat, lon, sigma, heading = -33.8567844123, 151.2152967456, 2.37, 111.3
    dst = write_geotagged_copy(src, tmp_path / "copies" / src.name, lat, lon, sigma, heading)
    assert sha256(src) == before  # the original is untouched
    gps = gps_tags(dst)
    d, m, s = (float(v) for v in gps[2])
    assert gps[1] == "S" and -(d + m / 60 + s / 3600) == pytest.approx(lat, abs=RATIONAL_DEG / 2 + 1e-12)
    d, m, s = (float(v) for v in gps[4])
    assert gps[3] == "E" and d + m / 60 + s / 3600 == pytest.approx(lon, abs=RATIONAL_DEG / 2 + 1e-12)
    assert float(gps[31]) == pytest.approx(sigma) and gps[16] == "T" and float(gps[17]) == pytest.approx(heading)
    assert gps[18] == "WGS-84" and gps[0] == b"\x02\x03\x00\x00"
    assert float(gps[6]) == pytest.approx(422.551)  # the photo's own GPSAltitude is kept (no height is estimated)
    # everything else is kept: pixels byte for byte (no re-encoding), the EXIF camera tags, the DJI XMP priors
    assert np.array_equal(cv2.imread(str(dst)), cv2.imread(str(DJI_PHOTO)))
    copy, original = read_photo_metadata(dst), read_photo_metadata(DJI_PHOTO)
    assert copy.exif == original.exif and copy.xmp == original.xmp and copy.time == original.time
    assert (copy.recorded_lat, copy.recorded_lon) == pytest.approx((lat, lon), abs=RATIONAL_DEG)
    assert dst.read_bytes()[-200_000:] == src.read_bytes()[-200_000:]  # the compressed data itself


def test_geotagged_copy_without_exif_and_with_dji_xmp_position(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    src = tmp_path / "plain.jpg"
    src.write_bytes(jpeg_with_metadata(rgb, xmp=dji_xmp({"Latitude": "+1.0", "Longitude": "+2.0",
                                                         "RelativeAltitude": "+50.00"})))
    dst = write_geotagged_copy(src, tmp_path / "out" / "plain.jpg", 12.5, -7.25)
    gps = gps_tags(dst)
    assert gps[1] == "N" and gps[3] == "W" and 31 not in gps and 17 not in gps  # no sigma, no heading given
    xmp = read_photo_metadata(dst).xmp
    # photogrammetry tools that prefer DJI's XMP position see the same fix
    assert float(xmp["drone-dji:Latitude"]) == pytest.approx(12.5) and float(xmp["drone-dji:Longitude"]) == -7.25
    assert xmp["drone-dji:RelativeAltitude"] == "+50.00"
    assert np.array_equal(cv2.imread(str(dst)), cv2.imread(str(src)))


def test_geotagged_copy_refuses_bad_input(tmp_path):
    src = tmp_path / "a.jpg"
    src.write_bytes(jpeg_with_metadata(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(OutputError, match="overwrite the original"):
        write_geotagged_copy(src, src, 1.0, 2.0)
    png = tmp_path / "b.png"
    cv2.imwrite(str(png), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(OutputError, match="b.png: not a JPEG"):
        write_geotagged_copy(png, tmp_path / "out.png", 1.0, 2.0)
    assert not (tmp_path / "out.png").exists()


def test_footprint_ring_is_closed_and_counter_clockwise():
    clockwise = [(0.0, 1.0), (1.0, 1.0), (1.0, 0.0), (0.0, 0.0)]  # (lon, lat): TL, TR, BR, BL of a north-up image
    ring = footprint_ring(clockwise)
    assert ring[0] == ring[-1] and len(ring) == 5
    def twice_area(r):
        return sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(r, r[1:]))

    assert twice_area(ring) == pytest.approx(2.0)  # counter-clockwise (positive), RFC 7946 §3.1.6
    assert twice_area(footprint_ring(list(reversed(clockwise)))) == pytest.approx(2.0)  # already CCW: kept
    assert footprint_wkt(clockwise).startswith("POLYGON((0.00000000 0.00000000, 1.00000000 0.00000000")
    assert footprint_wkt(None) == ""


def test_output_formats_follow_the_file_name():
    assert output_format("x.geojson") == output_format("X.JSON") == "geojson"
    assert output_format("a/b.csv") == "csv"
    with pytest.raises(OutputError, match="x.kml"):
        output_format("x.kml")
