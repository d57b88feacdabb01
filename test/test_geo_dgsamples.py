"""geo.dgsamples: the real installed WorldView-3 / WorldView-2 scenes of Longmont, CO, pansharpened.

Skipped only when the ``dgsamples`` package is not installed. Nothing derived from the imagery is written anywhere.
"""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest

from mobilegeo_ros.geo.dgsamples import PIP_COMMAND, dgsamples_root, load_scene, scene
from mobilegeo_ros.geo.raster import GeoError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("dgsamples") is None,
                                reason=f"dgsamples imagery not installed ({PIP_COMMAND})")


@pytest.fixture(scope="module")
def wv3():
    return load_scene("wv3")


def test_scene_paths():
    root = dgsamples_root()
    for tag in ("wv3", "wv2"):
        s = scene(tag)
        assert s.pan.is_file() and s.mul.is_file()
        assert s.pan.parent.name.endswith("_PAN") and s.mul.parent.name.endswith("_MUL")
        assert s.pan.is_relative_to(root / f"{tag}_longmont_1k")
    with pytest.raises(GeoError, match="unknown dgsamples scene 'wv4'"):
        scene("wv4")


def _check_longmont(o):
    assert o.crs.to_epsg() == 32613
    lat, lon = o.map_to_wgs84(*o.pixel_to_map(o.width / 2, o.height / 2))
    assert float(lat) == pytest.approx(40.138, abs=0.005) and float(lon) == pytest.approx(-105.140, abs=0.005)


def test_wv3_pansharpened(wv3):
    assert wv3.rgb.shape == (3340, 3340, 3) and wv3.rgb.dtype == np.uint8
    assert wv3.gsd_m == pytest.approx(0.30)
    _check_longmont(wv3)
    assert wv3.path == scene("wv3").mul
    # Real colour imagery: every channel uses the 8-bit range and the channels are not copies of each other.
    for c in range(3):
        assert wv3.rgb[..., c].std() > 15
    assert np.abs(wv3.rgb[..., 0].astype(int) - wv3.rgb[..., 2]).mean() > 2


def test_wv2_pansharpened_and_cross_date_alignment(wv3):
    wv2 = load_scene("wv2")
    assert wv2.rgb.shape == (2004, 2000, 3)
    assert wv2.gsd_m == pytest.approx(0.50)
    _check_longmont(wv2)
    on_wv3 = load_scene("wv2", target=wv3)
    assert on_wv3.rgb.shape == wv3.rgb.shape and on_wv3.transform == wv3.transform

    def grey_small(img):
        return cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (334, 334), interpolation=cv2.INTER_AREA).ravel()

    a, b = grey_small(wv3.rgb).astype(float), grey_small(on_wv3.rgb).astype(float)
    assert np.corrcoef(a, b)[0, 1] > 0.5  # June 2014 vs October 2014, same ground: measured ~0.80
    # Misregistered by 30 m the two dates no longer correlate as well: the high score comes from alignment.
    shifted = np.roll(b.reshape(334, 334), 10, axis=1).ravel()
    assert np.corrcoef(a, shifted)[0, 1] < np.corrcoef(a, b)[0, 1] - 0.2
