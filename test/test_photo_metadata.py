"""Camera priors from photo metadata (EXIF, DJI/Pix4D XMP) and their precedence against a priors CSV and the
command line: a real DJI Phantom 4 Pro photo, synthetic photos with injected XMP, malformed metadata."""

import math

import numpy as np
import pytest
from photo_fixtures import DJI_PHOTO, dji_properties, dji_xmp, exif_block, jpeg_with_metadata

from mobilegeo_ros.geo.render import CameraPose, camera_rotation
from mobilegeo_ros.geotag import prepare_photos, resolve_priors
from mobilegeo_ros.io.photo_metadata import (
    PriorValue, dji_gimbal_rotation, metadata_priors, read_photo_metadata,
)
from mobilegeo_ros.io.priors_csv import read_priors_csv
from mobilegeo_ros.localizer import Priors

GREY = np.full((120, 160, 3), 128, np.uint8)


def photo(tmp_path, name="p.jpg", xmp=None, exif=None, rgb=GREY):
    path = tmp_path / name
    path.write_bytes(jpeg_with_metadata(rgb, xmp=xmp, exif=exif))
    return path


def test_dji_phantom4pro_photo_priors_are_read_exactly():
    meta = read_photo_metadata(DJI_PHOTO)
    assert (meta.make, meta.model, meta.width_px, meta.height_px, meta.orientation) == ("DJI", "FC6310", 1058, 997, 1)
    assert meta.time == "2020-06-04T22:10:30"
    assert meta.xmp["drone-dji:RelativeAltitude"] == "+61.10"
    assert meta.xmp["drone-dji:GimbalPitchDegree"] == "-88.00"
    assert meta.xmp["drone-dji:GimbalYawDegree"] == "+111.30"
    assert meta.errors == {}
    # the photo's own GPS (45°2'16.77"N 94°20'55.53"W), reported only
    assert meta.recorded_lat == pytest.approx(45 + 2 / 60 + 16.77 / 3600, abs=1e-9)
    assert meta.recorded_lon == pytest.approx(-(94 + 20 / 60 + 55.53 / 3600), abs=1e-9)

    priors = metadata_priors(meta)
    assert {k: (v.value, v.source) for k, v in priors.items() if k != "hfov_deg"} == {
        "altitude_m": (61.1, "xmp:drone-dji"),
        "yaw_deg": (111.3, "xmp:drone-dji"),  # gimbal yaw: the image top's compass heading
        "pitch_deg": (2.0, "xmp:drone-dji"),  # gimbal pitch -88 = 2° from nadir, towards the image top
        "roll_deg": (0.0, "xmp:drone-dji"),
    }
    # The 1058×997 crop of the 5472×3078 calibrated frame (2·CalibratedOpticalCenterX/Y) keeps the calibrated
    # focal length of 3666.67 px: the field of view is the crop's, not the full frame's.
    hfov = priors["hfov_deg"]
    assert hfov.value == pytest.approx(math.degrees(2 * math.atan(1058 / 2 / 3666.666504)), abs=1e-9)
    assert hfov.source == "xmp:drone-dji" and "crop of the calibrated 5472×3078 frame" in hfov.note
    # DJI's 35 mm equivalent (24 mm, 36 mm film width) describes the same full frame as its calibration: 73.7° vs
    # 73.5°, so the 36 mm convention of the EXIF fallback agrees with the camera's own calibration.
    assert math.degrees(2 * math.atan(18 / meta.exif["FocalLengthIn35mmFilm"])) == pytest.approx(
        math.degrees(2 * math.atan(2736 / 3666.666504)), abs=0.5)


def test_dji_gimbal_angles_become_the_project_camera_attitude(tmp_path):
    """The DJI gimbal attitude (NED Euler angles, pitch -90 = nadir) and the project's camera convention
    (geo.render: yaw = heading of the image top, pitch from nadir towards the image top) describe the same camera."""
    rng = np.random.default_rng(4)
    for _ in range(200):
        yaw, pitch, roll = (round(float(a), 6) for a in (rng.uniform(-180, 180), rng.uniform(-90, -35),
                                                         rng.uniform(-20, 20)))
        rot = dji_gimbal_rotation(yaw, pitch, roll)
        # DJI's own definition: the optical axis points at compass bearing yaw, `pitch` degrees above the horizon
        expected_axis = [math.cos(math.radians(pitch)) * math.sin(math.radians(yaw)),
                         math.cos(math.radians(pitch)) * math.cos(math.radians(yaw)), math.sin(math.radians(pitch))]
        assert rot[:, 2] == pytest.approx(expected_axis, abs=1e-12)
        xmp = dji_xmp({"GimbalYawDegree": f"{yaw:+.6f}", "GimbalPitchDegree": f"{pitch:+.6f}",
                       "GimbalRollDegree": f"{roll:+.6f}"})
        meta = read_photo_metadata(photo(tmp_path, xmp=xmp))
        p = metadata_priors(meta)
        pose = CameraPose(0, 0, 1, p["yaw_deg"].value, p["pitch_deg"].value, p["roll_deg"].value)
        assert camera_rotation(pose) == pytest.approx(rot, abs=1e-8)
    # Roll is about the optical axis (aerospace: right side down, clockwise seen from behind the camera): straight
    # down, it turns the image clockwise seen from above, so the image top heads yaw + roll.
    for yaw, roll in ((30.0, 10.0), (-170.0, -25.0)):
        xmp = dji_xmp({"GimbalYawDegree": f"{yaw:+.2f}", "GimbalPitchDegree": "-90.00",
                       "GimbalRollDegree": f"{roll:+.2f}"})
        p = metadata_priors(read_photo_metadata(photo(tmp_path, xmp=xmp)))
        assert (p["yaw_deg"].value, p["pitch_deg"].value, p["roll_deg"].value) == pytest.approx(
            ((yaw + roll) % 360, 0.0, 0.0), abs=1e-9)
    # no roll: yaw as is, pitch + 90
    xmp = dji_xmp({"GimbalYawDegree": "-45.5", "GimbalPitchDegree": "-70.25", "GimbalRollDegree": "+0.0"})
    p = metadata_priors(read_photo_metadata(photo(tmp_path, xmp=xmp)))
    assert (p["yaw_deg"].value, p["pitch_deg"].value, p["roll_deg"].value) == (314.5, 19.75, 0.0)


@pytest.mark.parametrize("as_elements", [False, True])
def test_synthetic_photo_with_injected_xmp(tmp_path, as_elements):
    # a 160×120 photo from a camera calibrated at 320×240 (same aspect ratio: a resized photo)
    props = dji_properties(yaw_deg=-30.0, tilt_deg=10.0, altitude_m=75.5, width_px=160, height_px=120,
                           hfov_deg=70.0, frame_scale=2.0)
    meta = read_photo_metadata(photo(tmp_path, xmp=dji_xmp(props, as_elements)))
    p = metadata_priors(meta)
    assert {k: v.source for k, v in p.items()} == dict.fromkeys(
        ["yaw_deg", "pitch_deg", "roll_deg", "altitude_m", "hfov_deg"], "xmp:drone-dji")
    assert p["yaw_deg"].value == pytest.approx(330.0)
    assert p["pitch_deg"].value == pytest.approx(10.0)
    assert p["altitude_m"].value == 75.5
    assert p["hfov_deg"].value == pytest.approx(70.0, abs=1e-6)
    assert "focal length scaled by 0.5" in p["hfov_deg"].note


def test_exif_orientation_turns_the_attitude_and_the_field_of_view(tmp_path):
    """A photo stored sideways (EXIF Orientation 6: turned 90° clockwise to display) is decoded upright: its top is
    the stored left edge (heading yaw - 90) and its width is the stored height."""
    props = dji_properties(yaw_deg=20.0, tilt_deg=0.0, altitude_m=50.0, width_px=160, height_px=120, hfov_deg=70.0)
    meta = read_photo_metadata(photo(tmp_path, xmp=dji_xmp(props), exif=exif_block({0x0112: 6})))
    assert meta.orientation == 6 and meta.decoded_size == (120, 160)
    p = metadata_priors(meta)
    assert p["yaw_deg"].value == pytest.approx(290.0)
    focal_px = 80 / math.tan(math.radians(35))
    assert p["hfov_deg"].value == pytest.approx(math.degrees(2 * math.atan(60 / focal_px)))
    mirrored = metadata_priors(read_photo_metadata(photo(tmp_path, "m.jpg", xmp=dji_xmp(props),
                                                         exif=exif_block({0x0112: 2}))))
    assert "EXIF Orientation 2 (mirrored image)" in mirrored["yaw_deg"].error


def test_exif_focal_tags_give_the_field_of_view(tmp_path):
    meta = read_photo_metadata(photo(tmp_path, exif=exif_block({0x010F: "Maker"}, {0xA405: 24, 0x920A: 8.8})))
    fov = metadata_priors(meta)["hfov_deg"]
    assert fov.source == "exif" and fov.value == pytest.approx(math.degrees(2 * math.atan(18 / 24)))
    # no 35 mm equivalent: focal length 4.5 mm × 500 px/cm on the focal plane = 225 px
    meta = read_photo_metadata(photo(tmp_path, "fp.jpg", exif=exif_block(None, {0x920A: 4.5, 0xA20E: 500.0,
                                                                              0xA210: 3})))
    fov = metadata_priors(meta)["hfov_deg"]
    assert fov.source == "exif" and fov.value == pytest.approx(math.degrees(2 * math.atan(80 / 225)))
    assert metadata_priors(read_photo_metadata(photo(tmp_path, "none.jpg"))) == {}


MALFORMED = {
    "not a number": (dji_xmp({"GimbalPitchDegree": "abc", "GimbalYawDegree": "+10"}),
                     "XMP drone-dji:GimbalPitchDegree 'abc': not a number"),
    "impossible altitude": (dji_xmp({"RelativeAltitude": "-5.0"}),
                            "XMP drone-dji:RelativeAltitude gives altitude_m -5: outside the possible range"),
    "camera at the horizon": (dji_xmp({"GimbalPitchDegree": "+0.0", "GimbalYawDegree": "+10"}),
                              "XMP drone-dji:GimbalPitchDegree 0: the camera looks at or above the horizon"),
    "not finite": (dji_xmp({"CalibratedFocalLength": "nan"}),
                   "XMP drone-dji:CalibratedFocalLength 'nan': not a finite number"),
    "not XML": (dji_xmp({"RelativeAltitude": "50"}).replace(b"</rdf:RDF>", b"</rdf:RDFX>"),
                "XMP: not well-formed XML"),
    "entities": (b'<!DOCTYPE x [<!ENTITY a "b">]>' + dji_xmp({"RelativeAltitude": "50"}), "DOCTYPE/ENTITY"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_metadata_is_an_error_naming_the_file_and_the_field(tmp_path, case):
    xmp, fragment = MALFORMED[case]
    path = photo(tmp_path, "bad photo.jpg", xmp=xmp)
    errors = [v.error for v in metadata_priors(read_photo_metadata(path)).values() if v.error]
    assert errors and all(e.startswith(f"{path}: ") for e in errors), errors
    assert any(fragment in e for e in errors), errors
    assert all("\n" not in e for e in errors)


def test_priors_precedence_csv_then_metadata_then_command_line(tmp_path):
    props = dji_properties(yaw_deg=45.0, tilt_deg=0.0, altitude_m=80.0, width_px=160, height_px=120, hfov_deg=60.0)
    props["GimbalRollDegree"] = "oops"  # malformed, but the CSV below gives every attitude prior
    a = photo(tmp_path, "a.jpg", xmp=dji_xmp(props))
    b = photo(tmp_path, "b.jpg", xmp=dji_xmp(props))
    c = photo(tmp_path, "c.jpg")
    csv_path = tmp_path / "priors.csv"
    csv_path.write_text("file,yaw_deg,pitch_deg,roll_deg,altitude_m\na.jpg,10,1,2,\nc.jpg,,,,abc\n")
    jobs = prepare_photos([a, b, c], read_priors_csv(csv_path), Priors(altitude_m=99.0, hfov_deg=50.0, yaw_deg=5.0))
    ja, jb, jc = jobs
    assert ja.errors == []  # the malformed roll is overridden by the CSV
    assert (ja.priors.yaw_deg, ja.priors.pitch_deg, ja.priors.roll_deg, ja.priors.altitude_m) == (10, 1, 2, 80.0)
    assert ja.priors.hfov_deg == pytest.approx(60.0)
    assert ja.sources == {"yaw_deg": "csv", "pitch_deg": "csv", "roll_deg": "csv", "altitude_m": "xmp:drone-dji",
                          "hfov_deg": "xmp:drone-dji"}
    assert jb.errors == [f"{b}: XMP drone-dji:GimbalRollDegree 'oops': not a number"]
    assert jc.errors == [f"{c}: {csv_path} line 3, column altitude_m: 'abc' is not a number"]
    # nothing from the photo: the command line's defaults, labelled as such
    jd = resolve_priors(c, {}, None, Priors(altitude_m=99.0, hfov_deg=50.0))
    assert jd.sources == {"altitude_m": "cli", "hfov_deg": "cli"} and jd.priors.altitude_m == 99.0
    # the metadata can be ignored altogether
    assert prepare_photos([a], None, Priors(), use_metadata=False)[0].sources == {}
    assert resolve_priors(c, {"altitude_m": PriorValue(70.0, "xmp:drone-dji")}, None, Priors(altitude_m=5.0)
                          ).priors.altitude_m == 70.0
