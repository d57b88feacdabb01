"""The real WorldView imagery of the ``dgsamples`` package (≈1 km² of Longmont, CO), found by path.

``dgsamples`` is installed with ``--no-deps`` and its ``__init__`` imports ``tinytools`` (not installed), so it is
located with :func:`importlib.util.find_spec` and never imported. Two scenes are used:

- ``wv3``: WorldView-3, 2014-10-06, PAN 3340×3340 at 0.30 m, 8-band MUL 835×835 at 1.20 m, EPSG:32613.
- ``wv2``: WorldView-2, 2014-06-20, PAN 2000×2004 at 0.50 m, 8-band MUL 500×501 at 2.00 m, EPSG:32613.

LICENCE: the imagery is restricted; never write it or anything derived from it inside the repository (use /tmp).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from mobilegeo_ros.config import MapConfig
from mobilegeo_ros.geo.raster import GeoError, Orthophoto, read_orthophoto, resample_to

PIP_COMMAND = "pip install --no-deps dgsamples==1.1.2"
TAGS = ("wv3", "wv2")


@dataclass(frozen=True)
class Scene:
    """Paths of one dgsamples scene: ``pan`` (1-band panchromatic GeoTIFF) and ``mul`` (8-band multispectral)."""

    tag: str
    pan: Path
    mul: Path


def dgsamples_root() -> Path:
    """Directory of the installed ``dgsamples`` package (not imported). Raises GeoError if it is not installed."""
    spec = importlib.util.find_spec("dgsamples")
    if spec is None or not spec.submodule_search_locations:
        raise GeoError(f"the dgsamples imagery package is not installed; install it with `{PIP_COMMAND}`")
    return Path(next(iter(spec.submodule_search_locations)))


def scene(tag: str) -> Scene:
    """PAN and MUL GeoTIFF paths of the dgsamples scene ``tag`` ("wv3" or "wv2")."""
    if tag not in TAGS:
        raise GeoError(f"unknown dgsamples scene {tag!r}; choose one of {', '.join(TAGS)}")
    folder = dgsamples_root() / f"{tag}_longmont_1k"
    found = {}
    for kind in ("PAN", "MUL"):
        files = sorted(folder.glob(f"*_{kind}/*.TIF"))
        if len(files) != 1:
            raise GeoError(f"dgsamples scene {tag!r}: expected one {kind} GeoTIFF under {folder}, found "
                           f"{len(files)}; reinstall with `{PIP_COMMAND}`")
        found[kind.lower()] = files[0]
    return Scene(tag=tag, pan=found["pan"], mul=found["mul"])


def load_scene(tag: str, map_cfg: MapConfig | None = None, target: Orthophoto | None = None) -> Orthophoto:
    """The pansharpened RGB orthophoto of scene ``tag`` (Brovey: MUL bands 5,3,2 sharpened with the PAN).

    Args:
        tag: "wv3" (3340×3340 at 0.30 m) or "wv2" (2000×2004 at 0.50 m).
        map_cfg: band/stretch settings; its ``pansharpen_with`` is replaced by the scene's PAN.
        target: if given, the result is resampled (bilinear) onto this orthophoto's grid, e.g. the WV2 scene on the
            WV3 grid for cross-date tests; pixels ``target`` covers but the scene does not are black.
    """
    s = scene(tag)
    cfg = dataclasses.replace(map_cfg if map_cfg is not None else MapConfig(), pansharpen_with=str(s.pan))
    ortho = read_orthophoto(s.mul, cfg)
    return resample_to(ortho, target) if target is not None else ortho


__all__ = ["PIP_COMMAND", "Scene", "TAGS", "dgsamples_root", "load_scene", "scene"]
