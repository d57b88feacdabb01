"""Property-based (hypothesis) tests of the code that sees untrusted or arbitrary numbers: the image decoders, the
local ENU frame, the constant-velocity Kalman filter and the retrieval estimator.

Properties: the decoders raise nothing but ImageDecodeError for any field values a ROS message can carry and
round-trip every valid encoding; ENU <-> WGS84 round-trips to millimetres; the filter's covariance stays finite,
symmetric and positive semi-definite for any finite input and non-finite input is refused without touching the state;
the estimator never raises and a fix always has a finite position and a PSD covariance.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobilegeo_ros.config import EstimatorConfig
from mobilegeo_ros.estimator.kalman import ConstantVelocityFilter
from mobilegeo_ros.estimator.retrieval import estimate
from mobilegeo_ros.geo.enu import LocalENU
from mobilegeo_ros.io.images import (
    SUPPORTED_ENCODINGS, ImageDecodeError, bytes_per_pixel, decode_compressed, decode_image, encode_compressed,
    encode_image,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# sensor_msgs/Image: height, width, step are uint32, is_bigendian uint8, encoding a string, data uint8[]
uint32 = st.integers(0, 2**32 - 1)
small_dim = st.integers(0, 12)
encodings = st.one_of(st.sampled_from(SUPPORTED_ENCODINGS), st.text(max_size=12))
data_kinds = st.sampled_from(["bytes", "bytearray", "ndarray", "list", "memoryview"])


def _as(kind: str, raw: bytes):
    return {"bytes": raw, "bytearray": bytearray(raw), "ndarray": np.frombuffer(raw, np.uint8).copy(),
            "list": list(raw), "memoryview": memoryview(raw)}[kind]


def rgb_images(max_side: int = 24):
    return st.tuples(st.integers(1, max_side), st.integers(1, max_side), st.integers(0, 2**32 - 1)).map(
        lambda t: np.random.default_rng(t[2]).integers(0, 256, size=(t[0], t[1], 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------------------------
# Raw images


@FAST
@given(h=st.one_of(small_dim, uint32), w=st.one_of(small_dim, uint32), enc=encodings, big=st.integers(0, 255),
       step=st.one_of(st.integers(0, 64), uint32), raw=st.binary(max_size=600), kind=data_kinds)
def test_decode_image_arbitrary_fields_raise_only_image_decode_error(h, w, enc, big, step, raw, kind):
    try:
        img = decode_image(h, w, enc, big, step, _as(kind, raw), max_pixels=4096)
    except ImageDecodeError as e:
        assert str(e)  # names the field and the problem
        return
    assert img.shape == (h, w, 3) and img.dtype == np.uint8 and img.flags.c_contiguous


@FAST
@given(h=small_dim, w=small_dim, enc=st.sampled_from(SUPPORTED_ENCODINGS), pad=st.integers(0, 5),
       delta=st.integers(-3, 3), kind=data_kinds)
def test_decode_image_consistent_sizes_decode_and_off_by_some_are_refused(h, w, enc, pad, delta, kind):
    step = w * bytes_per_pixel(enc) + pad
    raw = bytes(np.random.default_rng(h * 31 + w).integers(0, 256, max(step * h + delta, 0), dtype=np.uint8))
    if h == 0 or w == 0 or delta != 0:
        with pytest.raises(ImageDecodeError):
            decode_image(h, w, enc, 0, step, _as(kind, raw))
    else:
        assert decode_image(h, w, enc, 0, step, _as(kind, raw)).shape == (h, w, 3)


@FAST
@given(rgb=rgb_images(), enc=st.sampled_from(SUPPORTED_ENCODINGS), pad=st.integers(0, 7), big=st.booleans())
def test_raw_encodings_round_trip(rgb, enc, pad, big):
    fields = encode_image(rgb, enc, step=rgb.shape[1] * bytes_per_pixel(enc) + pad, is_bigendian=big)
    out = decode_image(**fields)
    if enc.startswith(("mono", "8UC1", "16UC1")):
        luma = np.clip(np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)), 0, 255)
        np.testing.assert_array_equal(out, np.repeat(luma.astype(np.uint8)[:, :, None], 3, axis=2))
    else:
        np.testing.assert_array_equal(out, rgb)


# ---------------------------------------------------------------------------------------------------------------------
# Compressed images

formats = st.one_of(st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", "png compressed", "",
                                     "16UC1; compressedDepth png"]), st.text(max_size=20))


def _mutate(blob: bytes, data: st.DataObject) -> bytes:
    """Truncate, flip bytes, or splice random bytes into a valid stream."""
    op = data.draw(st.sampled_from(["truncate", "flip", "splice", "header"]))
    b = bytearray(blob)
    if op == "truncate":
        return bytes(b[: data.draw(st.integers(0, len(b)))])
    if op == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] = data.draw(st.integers(0, 255))
        return bytes(b)
    if op == "header":  # rewrite the size fields (PNG IHDR or the bytes after a JPEG SOF0 marker)
        i = b.find(b"IHDR")
        i = i + 4 if i >= 0 else max(b.find(b"\xff\xc0"), 0) + 5
        b[i: i + 8] = data.draw(st.binary(min_size=8, max_size=8))
        return bytes(b)
    i = data.draw(st.integers(0, len(b)))
    return bytes(b[:i]) + data.draw(st.binary(max_size=64)) + bytes(b[i:])


@FAST
@given(fmt=formats, raw=st.binary(max_size=300), kind=data_kinds)
def test_decode_compressed_random_bytes_raise_only_image_decode_error(fmt, raw, kind):
    try:
        img = decode_compressed(fmt, _as(kind, raw))
    except ImageDecodeError:
        return
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8


@FAST
@given(rgb=rgb_images(), which=st.sampled_from(["jpeg", "png"]), fmt=formats, data=st.data())
def test_decode_compressed_corrupted_streams_raise_only_image_decode_error(rgb, which, fmt, data):
    blob = _mutate(encode_compressed(rgb, which)["data"], data)
    try:
        img = decode_compressed(fmt, blob, max_pixels=64 * 64)
    except ImageDecodeError:
        return
    # whatever decoded agrees with its own header, within the pixel limit
    assert img.ndim == 3 and img.shape[2] == 3 and img.shape[0] * img.shape[1] <= 64 * 64


def tinted_images(max_side: int = 32):
    """Random texture at least one JPEG block (8x8) in size, red high and blue low, so a swapped channel order moves
    the red and blue means by ~128. (Under 8 px, 4:2:0 chroma subsampling makes the per-channel means of a random
    texture drift by up to 40 levels: not a contract JPEG offers.)"""
    def make(t):
        rng = np.random.default_rng(t[2])
        img = rng.integers(0, 128, size=(t[0], t[1], 3), dtype=np.uint8)
        img[..., 0] += 128
        return img
    return st.tuples(st.integers(8, max_side), st.integers(8, max_side), st.integers(0, 2**32 - 1)).map(make)


@FAST
@given(rgb=rgb_images(32))
def test_png_round_trip_is_exact(rgb):
    png = encode_compressed(rgb, "png")
    np.testing.assert_array_equal(decode_compressed(png["format"], png["data"]), rgb)


@FAST
@given(rgb=tinted_images(32), quality=st.integers(70, 100))
def test_jpeg_round_trip_keeps_channel_order_and_means(rgb, quality):
    jpg = encode_compressed(rgb, "jpeg", quality=quality)
    out = decode_compressed(jpg["format"], jpg["data"])
    assert out.shape == rgb.shape and out.dtype == np.uint8
    # JPEG is lossy; per-channel means stay within 4.3 levels over 5000 random draws (8-32 px, quality 70-100)
    drift = np.abs(out.reshape(-1, 3).mean(0) - rgb.reshape(-1, 3).astype(float).mean(0))
    assert drift.max() < 8.0, drift


def test_compressed_size_limit_is_checked_before_decoding():
    big = encode_compressed(np.zeros((64, 64, 3), np.uint8), "png")
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_compressed("png", big["data"], max_pixels=64 * 63)


# ---------------------------------------------------------------------------------------------------------------------
# Local ENU

lat0 = st.floats(-89.0, 89.0)
lon0 = st.floats(-180.0, 180.0)
h0 = st.floats(-400.0, 9000.0)
enu_m = st.floats(-50_000.0, 50_000.0)


@FAST
@given(la=lat0, lo=lon0, h=h0, e=enu_m, n=enu_m, u=st.floats(-1000.0, 5000.0))
def test_enu_wgs84_enu_round_trip(la, lo, h, e, n, u):
    enu = LocalENU(la, lo, h)
    lat, lon, hh = enu.to_wgs84(e, n, u)
    assert -90.0 <= lat <= 90.0 and all(map(math.isfinite, (lat, lon, hh)))
    e2, n2, u2 = enu.to_enu(lat, lon, hh)
    assert abs(e2 - e) < 1e-3 and abs(n2 - n) < 1e-3 and abs(u2 - u) < 1e-3


@FAST
@given(la=lat0, lo=lon0, h=h0, dlat=st.floats(-0.3, 0.3), dlon=st.floats(-0.3, 0.3), hh=st.floats(-400.0, 9000.0))
def test_wgs84_enu_wgs84_round_trip(la, lo, h, dlat, dlon, hh):
    enu = LocalENU(la, lo, h)
    lat = min(max(la + dlat, -89.9), 89.9)
    e, n, u = enu.to_enu(lat, lo + dlon, hh)
    lat2, lon2, h2 = enu.to_wgs84(e, n, u)
    assert abs(lat2 - lat) < 1e-8 and abs(h2 - hh) < 1e-3
    assert abs((lon2 - (lo + dlon) + 180.0) % 360.0 - 180.0) < 1e-8  # longitudes may come back wrapped by 360
    # the origin is the origin
    assert np.allclose(enu.to_enu(la, lo, h), (0.0, 0.0, 0.0), atol=1e-6)


@FAST
@given(la=st.one_of(st.just(math.nan), st.just(math.inf), st.floats(90.0001, 1e6), st.floats(-1e6, -90.0001)))
def test_enu_refuses_bad_origins(la):
    with pytest.raises(ValueError, match="LocalENU"):
        LocalENU(la, 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Constant-velocity Kalman filter

pos = st.floats(-1e6, 1e6)
sigma = st.floats(0.01, 1e4)


@st.composite
def measurement(draw):
    """(dt, z, R): dt from a step back to beyond the gap, z in metres, R an arbitrary SPD 2x2 (m²)."""
    dt = draw(st.one_of(st.floats(0.0, 6.0), st.floats(-100.0, 0.0), st.just(0.0)))
    z = (draw(pos), draw(pos))
    s1, s2, ang = draw(sigma), draw(sigma), draw(st.floats(0.0, math.pi))
    c, s = math.cos(ang), math.sin(ang)
    rot = np.array([[c, -s], [s, c]])
    return dt, z, rot @ np.diag([s1 * s1, s2 * s2]) @ rot.T


def _assert_psd(P: np.ndarray) -> None:
    assert np.all(np.isfinite(P))
    scale = max(float(np.abs(P).max()), 1e-12)
    assert np.abs(P - P.T).max() <= 1e-9 * scale
    assert np.linalg.eigvalsh(0.5 * (P + P.T)).min() >= -1e-9 * scale


@FAST
@given(ms=st.lists(measurement(), min_size=1, max_size=25), q=st.floats(1e-6, 100.0),
       gate=st.one_of(st.none(), st.floats(0.5, 0.99999)), t0=st.floats(-1e9, 1e9))
def test_filter_covariance_stays_symmetric_psd_and_finite(ms, q, gate, t0):
    f = ConstantVelocityFilter(accel_psd=q, gate_probability=gate, max_rejections=3, max_gap_s=5.0)
    t = t0
    for dt, z, R in ms:
        t += dt
        r = f.update(t, z, R)
        _assert_psd(r.covariance)
        assert np.all(np.isfinite(r.position)) and np.all(np.isfinite(r.velocity))
        assert r.event in {"init", "update", "rejected", "reset_gap", "reset_rejections", "reset_time_backwards"}
        if r.event == "update":  # a fused fix is never less certain than the measurement alone
            assert np.trace(r.position_cov) <= np.trace(R) * (1 + 1e-9) + 1e-9


bad = st.sampled_from([math.nan, math.inf, -math.inf])


@FAST
@given(first=measurement(), where=st.sampled_from(["t", "z", "R"]), value=bad, slot=st.integers(0, 3))
def test_filter_refuses_non_finite_input_and_keeps_its_state(first, where, value, slot):
    dt, z, R = first
    f = ConstantVelocityFilter()
    f.update(10.0, z, R)
    x, P, t = f.x.copy(), f.P.copy(), f.t
    tt, zz, RR = 11.0, list(z), R.copy()
    if where == "t":
        tt = value
    elif where == "z":
        zz[slot % 2] = value
    else:
        RR[slot // 2, slot % 2] = value
    with pytest.raises(ValueError, match="non-finite"):
        f.update(tt, zz, RR)
    np.testing.assert_array_equal(f.x, x)
    np.testing.assert_array_equal(f.P, P)
    assert f.t == t
    _assert_psd(f.update(11.0, z, R).covariance)  # and it goes on


@FAST
@given(R=st.lists(st.floats(-1e3, 1e3), min_size=4, max_size=4))
def test_filter_refuses_non_positive_definite_covariances(R):
    R = np.array(R).reshape(2, 2)
    sym = 0.5 * (R + R.T)
    f = ConstantVelocityFilter()
    if np.linalg.eigvalsh(sym)[0] <= 0:
        with pytest.raises(ValueError, match="positive definite"):
            f.update(0.0, (0.0, 0.0), R)
        assert not f.initialized
    else:
        _assert_psd(f.update(0.0, (0.0, 0.0), R).covariance)


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval estimate

score = st.one_of(st.floats(-1.0, 1.0), st.floats(-1e6, 1e6), st.just(math.nan),
                  st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def candidates(draw):
    k = draw(st.integers(0, 12))
    f = st.lists
    return (np.array(draw(f(score, min_size=k, max_size=k)), float),
            np.array(draw(f(st.integers(-1, 500), min_size=k, max_size=k)), np.int64),
            np.array(draw(f(st.floats(-1e7, 1e7), min_size=k, max_size=k)), float),
            np.array(draw(f(st.floats(-1e7, 1e7), min_size=k, max_size=k)), float),
            np.array(draw(f(st.floats(1.0, 1e4), min_size=k, max_size=k)), float),
            np.array(draw(f(st.floats(-720.0, 720.0), min_size=k, max_size=k)), float))


estimator_cfgs = st.builds(
    EstimatorConfig, softmax_temperature=st.floats(1e-4, 10.0), min_score=st.floats(-1.0, 1.0),
    min_margin=st.floats(0.0, 1.0), min_cluster_weight=st.floats(0.0, 1.0), cluster_radius_m=st.floats(0.0, 1e4),
    sigma_floor_m=st.floats(0.0, 100.0), sigma_scale=st.floats(0.1, 100.0))


@FAST
@given(c=candidates(), cfg=st.one_of(st.just(EstimatorConfig()), estimator_cfgs))
def test_estimate_never_raises_and_a_fix_is_finite_with_psd_covariance(c, cfg):
    scores, rows, ce, cn, size, rot = c
    with np.errstate(all="ignore"):  # extreme finite scores may under/overflow inside the softmax: not an error
        r = estimate(scores, rows, ce, cn, size, rot, cfg)
    assert r.status in ("fix", "no_fix")
    valid = (rows >= 0) & np.isfinite(scores)
    if not valid.any():
        assert r.status == "no_fix" and r.best_row == -1
        return
    assert r.best_row in set(rows[valid].tolist())
    assert 0.0 <= r.cluster_share <= 1.0 + 1e-9 and -1e-9 <= r.margin <= 1.0 + 1e-9
    if r.status == "fix":
        assert math.isfinite(r.easting) and math.isfinite(r.northing)
        assert ce[valid].min() - 1e-6 <= r.easting <= ce[valid].max() + 1e-6
        assert cn[valid].min() - 1e-6 <= r.northing <= cn[valid].max() + 1e-6
        _assert_psd(r.cov_en)
        assert r.sigma_m > 0 and math.isfinite(r.sigma_m)
        # float modulo maps a tiny negative rotation to exactly 360.0 (same direction as 0); gallery rotations are >= 0
        assert r.score >= cfg.min_score and r.heading_deg is not None and 0.0 <= r.heading_deg <= 360.0


@FAST
@given(k=st.integers(1, 10))
def test_estimate_all_nan_scores_is_no_fix(k):
    r = estimate(np.full(k, np.nan), np.arange(k), np.zeros(k), np.zeros(k), np.full(k, 60.0), np.zeros(k),
                 EstimatorConfig())
    assert r.status == "no_fix" and r.reason == "no candidate tiles"
