"""`mobilegeo localize` geotagging a folder of photos end to end: priors from DJI XMP, a --priors CSV and the
command line; GeoJSON and CSV outputs read back with json/csv and pyproj; EXIF GPS copies; bad photos reported
one line each while the others are localized."""

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from photo_fixtures import dji_properties, dji_xmp, jpeg_with_metadata
from PIL import Image
from pyproj import Geod, Transformer
from synthetic_world import render_views, synthetic_setup

from mobilegeo_ros.geo.raster import read_orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, footprint

ROOT = Path(__file__).resolve().parents[1]
ALT, HFOV, SIZE = 60.0, 70.0, (160, 120)


def mobilegeo(*args):
    return subprocess.run([sys.executable, "-m", "mobilegeo_ros.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Four photos in a folder: a (DJI XMP, yaw 30°), b (no metadata: CSV + command line), c (a bad CSV cell),
    d (a malformed XMP field); localized in one run with every output."""
    setup = synthetic_setup()
    d = tmp_path_factory.mktemp("geotag")
    photos = d / "photos"
    photos.mkdir()
    (va, *_), (vb, vc, vd) = (render_views(setup, [(0.35, 0.4)], ALT, 30.0, SIZE, HFOV),
                              render_views(setup, [(0.65, 0.6), (0.6, 0.35), (0.4, 0.65)], ALT, 0.0, SIZE, HFOV))
    dji_a = dji_properties(30.0, 0.0, ALT, *SIZE, HFOV, frame_scale=2.0)  # calibrated at 320×240, stored 160×120
    dji_0 = dji_properties(0.0, 0.0, ALT, *SIZE, HFOV)
    (photos / "a.jpg").write_bytes(jpeg_with_metadata(va[0], xmp=dji_xmp(dji_a)))
    (photos / "b.jpg").write_bytes(jpeg_with_metadata(vb[0]))
    (photos / "c.jpg").write_bytes(jpeg_with_metadata(vc[0], xmp=dji_xmp(dji_0)))
    (photos / "d.jpg").write_bytes(jpeg_with_metadata(vd[0], xmp=dji_xmp({**dji_0, "GimbalPitchDegree": "-9O.0"})))
    priors = d / "priors.csv"
    priors.write_text("file,yaw_deg,altitude_m\nb.jpg,0,60\nc.jpg,,abc\n")
    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.iterdir()}
    r = mobilegeo("localize", "--index", setup.index_dir, photos, "--priors", priors, "--hfov-deg", HFOV,
                  "--out", d / "fixes.geojson", "--out", d / "fixes.csv", "--write-exif", d / "tagged")
    ortho = read_orthophoto(setup.map_path, setup.cfg.map)
    truth = {"a.jpg": (va, 30.0), "b.jpg": (vb, 0.0)}
    return {"r": r, "dir": d, "photos": photos, "priors": priors, "hashes": hashes, "ortho": ortho, "truth": truth}


def test_bad_photos_are_one_line_errors_and_the_others_are_localized(run):
    r, photos, priors = run["r"], run["photos"], run["priors"]
    assert r.returncode == 2, r.stderr  # input errors: status 2, after every photo was handled
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("mobilegeo: error:")]
    assert errors == [
        f"mobilegeo: error: {photos / 'c.jpg'}: {priors} line 3, column altitude_m: 'abc' is not a number",
        f"mobilegeo: error: {photos / 'd.jpg'}: XMP drone-dji:GimbalPitchDegree '-9O.0': not a number",
    ]
    out = r.stdout.splitlines()
    assert out[0].startswith(f"{photos / 'a.jpg'}: verified lat ")
    assert "priors: yaw_deg 30 (xmp:drone-dji), pitch_deg 0 (xmp:drone-dji)" in out[0]
    assert out[1].startswith(f"{photos / 'b.jpg'}: verified lat ")
    assert "yaw_deg 0 (csv), altitude_m 60 (csv), hfov_deg 70 (cli)" in out[1]
    assert out[2].startswith("4 photos: 2 fixes (2 verified), 2 input errors; 2 geotagged copies in ")


def test_geojson_reads_back_with_the_right_coordinates(run):
    doc = json.loads((run["dir"] / "fixes.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and "crs" not in doc  # RFC 7946: WGS84 lon/lat, no crs member
    features = {(Path(f["properties"]["file"]).name, f["properties"]["feature"]): f for f in doc["features"]}
    assert sorted(features) == [("a.jpg", "footprint"), ("a.jpg", "position"), ("b.jpg", "footprint"),
                                ("b.jpg", "position")]  # photos without a position are left out
    ortho, geod = run["ortho"], Geod(ellps="WGS84")
    to_map = Transformer.from_crs("EPSG:4326", ortho.crs, always_xy=True)
    for name, (view, yaw) in run["truth"].items():
        point = features[(name, "position")]
        props = point["properties"]
        assert point["geometry"]["type"] == "Point" and props["status"] == "verified"
        lon, lat = point["geometry"]["coordinates"]
        true_lat, true_lon = view[2]
        _, _, dist = geod.inv(lon, lat, true_lon, true_lat)
        assert dist < 3.0, (name, dist)  # a verified registration: metres
        assert np.hypot(*np.subtract(to_map.transform(lon, lat), view[1])) < 3.0
        assert props["sigma_m"] > 0 and abs((props["heading_deg"] - yaw + 180) % 360 - 180) < 3.0
        assert props["altitude_m"] == pytest.approx(ALT)
        # the ground footprint: the true camera's image corners, within metres
        poly = features[(name, "footprint")]["geometry"]
        ring = poly["coordinates"][0]
        assert poly["type"] == "Polygon" and len(ring) == 5 and ring[0] == ring[-1]
        assert sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:])) > 0  # counter-clockwise
        corners = np.array([to_map.transform(x, y) for x, y in ring[:4]])
        true_corners = footprint(CameraPose(*view[1], ALT, yaw), CameraModel(*SIZE, HFOV))
        for corner in true_corners:
            assert np.min(np.hypot(*(corners - corner).T)) < 4.0, (name, corner, corners)
    a, b = features[("a.jpg", "position")]["properties"], features[("b.jpg", "position")]["properties"]
    assert {k: a[f"source_{k}"] for k in ("yaw_deg", "pitch_deg", "altitude_m", "hfov_deg")} == dict.fromkeys(
        ("yaw_deg", "pitch_deg", "altitude_m", "hfov_deg"), "xmp:drone-dji")
    assert a["prior_hfov_deg"] == pytest.approx(HFOV, abs=1e-6) and a["prior_yaw_deg"] == pytest.approx(30.0)
    assert (b["source_yaw_deg"], b["source_altitude_m"], b["source_hfov_deg"], b["source_pitch_deg"]) == (
        "csv", "csv", "cli", None)


def test_csv_lists_every_photo(run):
    with open(run["dir"] / "fixes.csv", newline="") as f:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(f)}
    assert {k: r["status"] for k, r in rows.items()} == {"a.jpg": "verified", "b.jpg": "verified", "c.jpg": "error",
                                                        "d.jpg": "error"}
    assert "column altitude_m" in rows["c.jpg"]["reason"] and rows["c.jpg"]["lat"] == ""
    assert rows["a.jpg"]["footprint_wkt"].startswith("POLYGON((") and rows["a.jpg"]["source_yaw_deg"] == "xmp:drone-dji"
    geojson = {Path(f["properties"]["file"]).name: f["geometry"]["coordinates"]
               for f in json.loads((run["dir"] / "fixes.geojson").read_text())["features"]
               if f["properties"]["feature"] == "position"}
    for name in ("a.jpg", "b.jpg"):
        assert [float(rows[name]["lon"]), float(rows[name]["lat"])] == pytest.approx(geojson[name], abs=1e-8)


def test_exif_copies_carry_the_fix_and_the_originals_are_untouched(run):
    photos, tagged = run["photos"], run["dir"] / "tagged"
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.iterdir()} == run["hashes"]
    assert sorted(p.name for p in tagged.iterdir()) == ["a.jpg", "b.jpg"]  # located photos only
    with open(run["dir"] / "fixes.csv", newline="") as f:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(f)}
    for name in ("a.jpg", "b.jpg"):
        gps = Image.open(tagged / name).getexif().get_ifd(0x8825)
        lat = sum(float(v) / 60 ** i for i, v in enumerate(gps[2])) * (1 if gps[1] == "N" else -1)
        lon = sum(float(v) / 60 ** i for i, v in enumerate(gps[4])) * (1 if gps[3] == "E" else -1)
        # the CSV's 8 decimals and the EXIF rationals (1e-5 arc seconds)
        assert (lat, lon) == pytest.approx((float(rows[name]["lat"]), float(rows[name]["lon"])), abs=1e-8)
        assert float(gps[31]) == pytest.approx(float(rows[name]["sigma_m"]), abs=0.005)


def test_localize_help_documents_the_geotagging_options():
    r = mobilegeo("localize", "--help")
    assert r.returncode == 0
    for option in ("--priors", "--out", "--write-exif", "--ignore-metadata", "xmp:drone-dji"):
        assert option in r.stdout, option


def test_summary_counts_fixes_and_no_fix_reasons():
    from mobilegeo_ros.geotag import PhotoFix, PhotoJob, summary_line
    from mobilegeo_ros.localizer import Priors

    def fix(status, reason="", lat=float("nan")):
        return PhotoFix(Path("x.jpg"), status, reason, PhotoJob(Path("x.jpg"), Priors()), lat=lat, lon=lat)

    fixes = [fix("verified", lat=1.0), fix("verified", lat=2.0), fix("retrieval", lat=3.0),
             fix("no_fix", "no candidate verified (0 matches < min_inliers 15; 2 matches < min_inliers 15)"),
             fix("no_fix", "no candidate verified (7 matches < min_inliers 15)"),
             fix("no_fix", "best score 0.210 < min_score 0.300"), fix("error", "x.jpg: XMP: not well-formed XML")]
    assert summary_line(fixes) == ("7 photos: 3 fixes (1 retrieval, 2 verified), 3 no fix (2 × no candidate verified, "
                                   "1 × best score # < min_score #), 1 input error")
    assert summary_line(fixes[:1]) == "1 photo: 1 fix (1 verified)"


@pytest.mark.parametrize("extra,fragment", [
    (["--lat", "10"], "--lat, --lon and --radius-m go together"),
    (["--out", "fixes.kml"], "--out 'fixes.kml': unknown format"),
    (["--priors", "priors.csv"], "line 1: unknown column 'altitude' (known: file, yaw_deg"),
    (["--write-exif", "."], "is not an empty folder"),
])
def test_whole_run_mistakes_stop_before_any_work(tmp_path, monkeypatch, capsys, extra, fragment):
    from mobilegeo_ros import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jpg").write_bytes(jpeg_with_metadata(np.zeros((8, 8, 3), np.uint8)))
    (tmp_path / "priors.csv").write_text("file,altitude\na.jpg,50\n")
    assert cli.main(["localize", "--index", str(tmp_path / "no_index"), "a.jpg", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mobilegeo: error:") and fragment in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "priors.csv"]  # nothing written
