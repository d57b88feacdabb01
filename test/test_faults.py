"""Faults while running: the inference backend raising or returning NaN (a simulated device fault), the index search
failing, and attitude/camera priors that make a position impossible. Each drops or no-fixes the frame, is counted,
shows in the diagnostics level, and the next good frame localizes again.

Start-up refusals are covered elsewhere and not repeated here: truncated/corrupt ``index.faiss`` / ``tiles.npz`` /
``index.json``, pickled npz and edited identities (test_index_tile_index.py::test_missing_and_corrupt_files_raise_
index_file_error), a model/index mismatch (test_ros_process.py::test_model_index_mismatch_exits_2,
test_cli.py::test_index_built_with_another_model_is_refused), truncated or corrupt weights
(test_model_mobilenetv2.py), a missing index directory (test_ros_process.py::test_missing_index_dir_exits_2).
"""

import math

import numpy as np
import pytest

from mobilegeo_ros import config as config_mod
from mobilegeo_ros.io.images import encode_image
from mobilegeo_ros.estimator.status import FixStatus
from mobilegeo_ros.localizer import Localizer, Priors
from mobilegeo_ros.ros.pipeline import ERROR, OK, Frame, LocalizationPipeline, diagnostic_level
from synthetic_world import render_views, synthetic_setup


@pytest.fixture(scope="module")
def world():
    setup = synthetic_setup()
    # every frame localized on its own (tracking off), so every frame goes through the embedding and the index
    # search that these tests break; keyframes inline for deterministic results
    cfg = config_mod.from_dict({**setup.overrides, "node": {"window_size": 3, "window_s": 5.0, "max_views": 2,
                                                            "keyframes_in_background": False},
                                "tracker": {"enabled": False}})
    loc = Localizer.from_files(setup.index_dir, cfg)
    views = render_views(setup, [(0.45, 0.5), (0.47, 0.5), (0.49, 0.5), (0.51, 0.5), (0.53, 0.5), (0.55, 0.5)])
    return loc, cfg, views


def _frames(views, t0=100.0):
    return [Frame("raw", encode_image(rgb, "rgb8"), stamp_s=t0 + 0.2 * k) for k, (rgb, _, _) in enumerate(views)]


def _faulty(real, fail_on: set[int], mode: str):
    calls = {"n": 0}

    def embed(images):
        calls["n"] += 1
        if calls["n"] in fail_on:
            if mode == "raise":
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            out = real(images)
            out[:] = np.nan
            return out
        return real(images)

    return embed


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_backend_fault_drops_the_frame_reports_error_and_recovers(world, monkeypatch, mode):
    loc, cfg, views = world
    pipe = LocalizationPipeline(loc, cfg)
    monkeypatch.setattr(loc.model, "embed", _faulty(loc.model.embed, {3}, mode))
    outs, levels, prev = [], [], None
    for k, frame in enumerate(_frames(views)):
        outs.append(pipe.process(frame))
        snap = pipe.stats.snapshot()
        levels.append(diagnostic_level(snap, prev, now=snap["last_image_s"], stale_timeout_s=1.0)[0])
        prev = snap
        pipe.stats.note_received(frame.received_s)  # the node counts receipts; keeps the level off STALE
    assert outs[2] is None
    snap = pipe.stats.snapshot()
    assert snap["errors"] == 1 and snap["processed"] == 5
    expected = "RuntimeError: CUDA error" if mode == "raise" else "non-finite embedding"
    assert expected in snap["last_error"]
    assert levels[2] == ERROR and levels[3] == OK and levels[1] == OK
    # the faulty frame never entered the window: every later frame is a fix near its truth
    for out, (_, _, (lat, lon)) in list(zip(outs, views))[3:]:
        assert out is not None and out.status is FixStatus.VERIFIED, out.reason if out else None
        e, n, _ = pipe.tracker.enu.to_enu(lat, lon, pipe.tracker.enu.origin_h)
        assert math.hypot(out.e - e, out.n - n) < 20.0
    assert all(np.all(np.isfinite(w[1])) for w in pipe.tracker.window)


def test_index_search_fault_is_counted_and_the_node_recovers(world, monkeypatch):
    loc, cfg, views = world
    pipe = LocalizationPipeline(loc, cfg)
    real = loc.index.search
    calls = {"n": 0}

    def search(q, k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("faiss: out of memory")
        return real(q, k)

    monkeypatch.setattr(loc.index, "search", search)
    frames = _frames(views[:2])
    assert pipe.process(frames[0]) is None
    assert "MemoryError" in pipe.stats.last_error and pipe.stats.errors == 1
    out = pipe.process(frames[1])
    assert out is not None and out.status is FixStatus.VERIFIED


@pytest.mark.parametrize("pitch, roll", [(90.0, 0.0), (-95.0, 0.0), (0.0, 90.0), (120.0, 30.0)])
def test_attitude_prior_beyond_the_horizon_is_no_fix_not_a_backend_error(world, pitch, roll):
    """Regression: Localizer raised GeoError (image_to_ground) for such priors, so the pipeline counted a backend
    error and diagnostics went ERROR for a bad IMU message."""
    loc, cfg, views = world
    pipe = LocalizationPipeline(loc, cfg)
    out = pipe.process(_frames(views[:1])[0], Priors(altitude_m=80.0, yaw_deg=0.0, pitch_deg=pitch, roll_deg=roll))
    assert out is not None and out.status is FixStatus.NO_FIX and "the drone's position is unknown" in out.reason
    assert pipe.stats.errors == 0 and pipe.stats.no_fixes == 1
    for image in (None, views[0][0]):  # retrieval only, and with the geometric refinement
        fix = loc.localize_embeddings(loc.embed([views[0][0]]),
                                      Priors(altitude_m=80.0, pitch_deg=pitch, roll_deg=roll), image=image)
        assert fix.status is FixStatus.NO_FIX and math.isnan(fix.lat) and math.isnan(fix.sigma_m)


def test_a_near_horizontal_tilt_prior_is_no_fix_not_a_confident_far_fix(world):
    """Regression: pitch 89.9° at 80 m moved the fix ~45 km away while reporting a tile-sized sigma."""
    loc, cfg, views = world
    for image in (None, views[0][0]):
        fix = loc.localize_embeddings(loc.embed([views[0][0]]),
                                      Priors(altitude_m=80.0, yaw_deg=0.0, pitch_deg=89.9), image=image)
        assert fix.status is FixStatus.NO_FIX and "60 deg from nadir" in fix.reason


def test_a_tilt_offset_off_the_projection_is_no_fix(world):
    """Regression: a huge altitude prior times a tilt moved the position to where the projection has no inverse;
    the fix had lat = lon = inf with status fix and the Kalman filter raised (counted as a backend error). Such an
    offset is now refused before any projection: more than 10 view footprints from the registered view."""
    loc, cfg, views = world
    pipe = LocalizationPipeline(loc, cfg)
    # 1e12 m x tan(45 deg) puts the position ~1e12 m south of the view: outside the domain of the map's projection
    out = pipe.process(_frames(views[:1])[0], Priors(altitude_m=1e12, yaw_deg=0.0, pitch_deg=45.0))
    assert out is not None and pipe.stats.errors == 0
    assert out.status is FixStatus.NO_FIX and "inconsistent priors" in out.reason, out.reason
    assert math.isnan(out.lat) and math.isnan(out.lon)


@pytest.mark.parametrize("field, value", [("hfov_deg", 0.0), ("hfov_deg", 180.0), ("hfov_deg", -30.0),
                                          ("hfov_deg", 1e9), ("altitude_m", 0.0), ("altitude_m", -50.0),
                                          ("radius_m", -5.0), ("lat", 1e9)])
def test_out_of_range_priors_are_ignored(world, field, value):
    """Regression: hfov 0 raised ZeroDivisionError in refine.expected_gsd (a backend error); other impossible values
    (negative altitude, a latitude of 1e9) silently steered the search. They are now treated as unknown."""
    loc, cfg, views = world
    p = Priors(**{field: value})
    assert p.finite(field) is None
    assert Priors(hfov_deg=60.0, altitude_m=80.0, radius_m=0.0, lat=45.0).finite(field) is not None
    pipe = LocalizationPipeline(loc, cfg)
    out = pipe.process(_frames(views[:1])[0], Priors(altitude_m=80.0, **{field: value}) if field != "altitude_m"
                       else Priors(hfov_deg=60.0, altitude_m=value))
    assert out is not None and out.status is FixStatus.VERIFIED and pipe.stats.errors == 0, pipe.stats.last_error


@pytest.mark.parametrize("altitude_m", [1e7, 1e9])
def test_a_corrupt_altitude_prior_is_no_fix_not_a_fix_far_away(world, altitude_m):
    """Found by review: an altitude prior of 1e7–1e9 m with pitch 45° gave a verified fix thousands of km away with a
    2.5 m sigma (the position was still on the projection). The tilt offset is bounded by the view's footprint."""
    loc, cfg, views = world
    pipe = LocalizationPipeline(loc, cfg)
    out = pipe.process(_frames(views[:1])[0], Priors(altitude_m=altitude_m, yaw_deg=0.0, pitch_deg=45.0))
    assert out is not None and pipe.stats.errors == 0
    assert out.status is FixStatus.NO_FIX and "inconsistent priors" in out.reason, out.reason
