"""Geotag a set of photos: priors per photo (metadata, CSV, command line), one fix per photo, ground footprints.

``mobilegeo localize`` is a thin shell around this module:

1. :func:`list_photos` expands the command line's paths (a folder gives its image files);
2. :func:`prepare_photos` reads each photo's EXIF/XMP priors (:mod:`mobilegeo_ros.io.photo_metadata`) and its row
   of the ``--priors`` CSV (:mod:`mobilegeo_ros.io.priors_csv`), and resolves every prior by precedence
   **CSV > photo metadata > command line** (:func:`resolve_priors`), recording where each came from
   (``csv``, ``xmp:drone-dji``, ``xmp:camera``, ``exif``, ``cli``);
3. :func:`localize_photos` runs every photo through the one path of a camera frame, :class:`Tracker.process
   <mobilegeo_ros.tracker.Tracker>` (reset between photos unless they are frames of one sequence), and yields a
   :class:`PhotoFix` per photo, with the image's ground footprint (:func:`ground_footprint`);
4. :func:`summary_line` counts fixes and no-fix reasons; :mod:`mobilegeo_ros.io.gis_outputs` writes GeoJSON, CSV
   and geotagged copies.

A photo's bad input (unreadable file, malformed metadata field or CSV cell, impossible value) makes that photo a
``PhotoFix`` with status ``error`` and a one-line reason naming the file and the field; every other photo is still
localized.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mobilegeo_ros.io.photo_metadata import (
    MetadataError, PhotoMetadata, PriorValue, metadata_priors, read_photo_metadata,
)
from mobilegeo_ros.io.priors_csv import PRIOR_COLUMNS, PriorsRow, PriorsTable
from mobilegeo_ros.localizer import Localizer, Priors

if TYPE_CHECKING:
    from mobilegeo_ros.tracker import TrackResult

#: File name suffixes taken from a folder given on the command line (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
#: Status of a photo whose input could not be used (not localized).
ERROR = "error"
CSV, CLI = "csv", "cli"
#: Decimal places of the prior values reported (1e-9 degrees or metres: float noise of the conversions removed).
PRIOR_DECIMALS = 9


def list_photos(paths: Iterable[str | Path]) -> list[Path]:
    """The photos named on a command line: files as given (in order), folders replaced by their image files
    (:data:`IMAGE_SUFFIXES`, sorted by name, not recursive). A missing path is kept (it becomes that photo's error)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


@dataclass
class PhotoJob:
    """One photo to localize: its resolved priors, the source of each (``sources``: prior name → label), how some
    were derived (``notes``), and the input errors that keep it from being localized (one line each)."""

    path: Path
    priors: Priors
    sources: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    metadata: PhotoMetadata | None = None


def resolve_priors(path: Path, from_metadata: dict[str, PriorValue], row: PriorsRow | None, defaults: Priors
                   ) -> PhotoJob:
    """Each prior of :data:`PRIOR_COLUMNS` from the first source that gives it: the CSV row, the photo's metadata,
    the command line (``defaults``). A CSV row's errors and the errors of the metadata priors that are used become
    the job's errors (the CSV overrides, and so silences, a malformed metadata field)."""
    job = PhotoJob(path, Priors())
    if row is not None:
        job.errors.extend(f"{path}: {e}" for e in row.errors)
    for name in PRIOR_COLUMNS:
        meta = from_metadata.get(name)
        if row is not None and name in row.values:
            setattr(job.priors, name, row.values[name])
            job.sources[name] = CSV
        elif meta is not None:
            if meta.error:
                if meta.error not in job.errors:
                    job.errors.append(meta.error)
                continue
            setattr(job.priors, name, meta.value)
            job.sources[name] = meta.source
            if meta.note:
                job.notes[name] = meta.note
        elif getattr(defaults, name) is not None:
            setattr(job.priors, name, getattr(defaults, name))
            job.sources[name] = CLI
    return job


def prepare_photos(paths: Sequence[Path], table: PriorsTable | None, defaults: Priors, use_metadata: bool = True
                   ) -> list[PhotoJob]:
    """A :class:`PhotoJob` per photo (header reads only, no pixel decoding): metadata priors (unless
    ``use_metadata`` is False), the photo's CSV row, the command-line ``defaults``. A missing file, a JPEG/PNG with
    a bad header (:func:`mobilegeo_ros.io.images.probe_image_file`) or a file that is no image is the job's error."""
    from mobilegeo_ros.io.images import ImageDecodeError, probe_image_file

    jobs = []
    for path in paths:
        metadata, from_metadata, read_error = None, {}, ""
        try:
            probe_image_file(path)
            metadata = read_photo_metadata(path)
        except (ImageDecodeError, MetadataError) as e:
            read_error = str(e)
        if metadata is not None and use_metadata:
            from_metadata = metadata_priors(metadata)
        job = resolve_priors(path, from_metadata, table.row_for(path) if table is not None else None, defaults)
        job.metadata = metadata
        if read_error:
            job.errors.insert(0, read_error)
        jobs.append(job)
    return jobs


@dataclass
class PhotoFix:
    """One photo's outcome. ``status``: a :class:`~mobilegeo_ros.estimator.status.FixStatus` value or ``error``;
    ``lat``/``lon`` (WGS84 degrees) the drone's nadir point, ``sigma_m`` its 1-sigma horizontal error (metres),
    ``heading_deg`` the compass heading of the image top, ``altitude_m`` above ground, ``pitch_deg``/``roll_deg`` the
    camera tilt (solved or prior), NaN/None when unknown; ``footprint_lonlat``: the image corners on the ground
    (top-left, top-right, bottom-right, bottom-left; ``(lon, lat)`` degrees), None when the altitude or the field of
    view is unknown."""

    path: Path
    status: str
    reason: str
    job: PhotoJob
    lat: float = math.nan
    lon: float = math.nan
    easting: float = math.nan  # the same point in the index's map CRS (metres)
    northing: float = math.nan
    sigma_m: float = math.nan
    heading_deg: float | None = None
    altitude_m: float = math.nan
    pitch_deg: float | None = None
    roll_deg: float | None = None
    score: float = math.nan
    inliers: int = 0
    width_px: int = 0
    height_px: int = 0
    footprint_lonlat: list[tuple[float, float]] | None = None
    track: TrackResult | None = field(default=None, repr=False)  # the tracker's full result, when localized

    @property
    def is_fix(self) -> bool:
        return self.status not in (ERROR, "no_fix") and math.isfinite(self.lat) and math.isfinite(self.lon)

    def properties(self) -> dict:
        """Flat JSON-friendly attributes (GeoJSON properties, CSV columns, ``--json`` lines): the fix, the photo's
        time and own GPS position, and per prior ``prior_<name>`` (value used) and ``source_<name>``."""
        def num(x):
            return None if x is None or not math.isfinite(x) else float(x)

        meta = self.job.metadata
        out = {"file": str(self.path), "status": self.status, "reason": self.reason, "lat": num(self.lat),
               "lon": num(self.lon), "sigma_m": num(self.sigma_m), "heading_deg": num(self.heading_deg),
               "altitude_m": num(self.altitude_m), "pitch_deg": num(self.pitch_deg), "roll_deg": num(self.roll_deg),
               "score": num(self.score), "inliers": self.inliers, "time": meta.time if meta else None,
               "photo_gps_lat": meta.recorded_lat if meta else None,
               "photo_gps_lon": meta.recorded_lon if meta else None}
        for name in PRIOR_COLUMNS:
            value = num(getattr(self.job.priors, name))
            out[f"prior_{name}"] = None if value is None else round(value, PRIOR_DECIMALS)
            out[f"source_{name}"] = self.job.sources.get(name)
        out["prior_notes"] = "; ".join(f"{k}: {v}" for k, v in self.job.notes.items()) or None
        return out


#: Column order of :meth:`PhotoFix.properties` (the CSV header).
PROPERTY_NAMES = tuple(PhotoFix(Path(""), "", "", PhotoJob(Path(""), Priors())).properties())


def ground_footprint(localizer: Localizer, fix: PhotoFix, hfov_deg: float | None) -> list[tuple[float, float]] | None:
    """The ground ``(lon, lat)`` of the image corners (top-left, top-right, bottom-right, bottom-left, degrees):
    the camera at the fix (map CRS, altitude above the flat ground, heading, pitch and roll, 0 when unknown) with
    the field of view ``hfov_deg`` (:func:`mobilegeo_ros.geo.render.footprint`), the corners turned to WGS84 through
    the index's CRS (pyproj). None without a fix, an altitude or a field of view, or when a corner is at or above
    the horizon."""
    from mobilegeo_ros.geo.raster import GeoError
    from mobilegeo_ros.geo.render import CameraModel, CameraPose, footprint

    if (not fix.is_fix or hfov_deg is None or not math.isfinite(fix.altitude_m) or fix.altitude_m <= 0
            or not (math.isfinite(fix.easting) and math.isfinite(fix.northing))):
        return None
    pose = CameraPose(fix.easting, fix.northing, fix.altitude_m, fix.heading_deg or 0.0, fix.pitch_deg or 0.0,
                      fix.roll_deg or 0.0)
    try:
        corners = footprint(pose, CameraModel(fix.width_px, fix.height_px, hfov_deg))
    except GeoError:
        return None
    out = []
    for e, n in corners:
        lat, lon = localizer.map_to_wgs84(float(e), float(n))
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return None
        out.append((lon, lat))
    return out


def localize_photos(localizer: Localizer | None, jobs: Sequence[PhotoJob], sequence_hz: float | None = None
                    ) -> Iterator[PhotoFix]:
    """Localize each job's photo through :meth:`mobilegeo_ros.tracker.Tracker.process` (the node's path, keyframes
    inline), one :class:`PhotoFix` per job in order. Independent photos (``sequence_hz`` None) reset the tracker
    before each; frames of one sequence are stamped ``index / sequence_hz`` seconds and tracked. A job with input
    errors, or whose pixels cannot be decoded, yields status ``error`` and the others go on. ``localizer`` may be
    None when every job has input errors (nothing to localize, no model to load)."""
    from mobilegeo_ros.io.images import ImageDecodeError, read_image_file
    from mobilegeo_ros.tracker import Tracker

    tracker = None
    try:
        for i, job in enumerate(jobs):
            if job.errors:
                yield PhotoFix(job.path, ERROR, "; ".join(job.errors), job)
                continue
            try:
                image = read_image_file(job.path)
            except ImageDecodeError as e:
                yield PhotoFix(job.path, ERROR, str(e), job)
                continue
            if tracker is None:
                if localizer is None:
                    raise ValueError("localize_photos: a photo to localize and no localizer")
                tracker = Tracker(localizer, localizer.cfg)
            if sequence_hz is None:
                tracker.reset()  # independent photos: each is localized on its own
            res = tracker.process(image, i / sequence_hz if sequence_hz else 0.0, job.priors)
            h, w = image.shape[:2]
            fix = PhotoFix(job.path, res.status.value, res.reason, job, width_px=w, height_px=h, score=res.score,
                           inliers=res.inliers, track=res)
            if res.status.is_fix:
                fix.lat, fix.lon, fix.sigma_m = res.lat, res.lon, res.sigma_m
                fix.easting, fix.northing = res.easting, res.northing
                fix.heading_deg = None if res.heading_deg is None else res.heading_deg % 360.0
                fix.altitude_m = res.altitude_m
                fix.pitch_deg = res.pitch_deg if res.pitch_deg is not None else job.priors.finite("pitch_deg")
                fix.roll_deg = res.roll_deg if res.roll_deg is not None else job.priors.finite("roll_deg")
                fix.footprint_lonlat = ground_footprint(localizer, fix, job.priors.finite("hfov_deg"))
            yield fix
    finally:
        if tracker is not None:
            tracker.close()


def reason_kind(reason: str) -> str:
    """The kind of a no-fix reason: its head (before a parenthesis or a semicolon), numbers masked, e.g.
    ``"no candidate verified"``, ``"best score # < min_score #"``, to count the reasons of one kind."""
    head = re.split(r"\s*[(;]", reason, maxsplit=1)[0]
    return re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "#", head).strip()[:80] or "unknown"


def summary_line(fixes: Sequence[PhotoFix]) -> str:
    """``"12 photos: 9 fixes (8 verified, 1 retrieval), 2 no fix (2 × no candidate verified), 1 input error"``."""
    statuses = Counter(f.status for f in fixes)
    n_fix = sum(1 for f in fixes if f.is_fix)
    kinds = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()) if s not in (ERROR, "no_fix"))
    text = f"{len(fixes)} photo{'s' if len(fixes) != 1 else ''}: {n_fix} fix{'es' if n_fix != 1 else ''}"
    text += f" ({kinds})" if kinds else ""
    no_fix = [f for f in fixes if f.status == "no_fix"]
    if no_fix:
        reasons = Counter(reason_kind(f.reason) for f in no_fix).most_common()
        text += f", {len(no_fix)} no fix (" + ", ".join(f"{n} × {r}" for r, n in reasons) + ")"
    if statuses[ERROR]:
        text += f", {statuses[ERROR]} input error{'s' if statuses[ERROR] != 1 else ''}"
    return text


__all__ = ["ERROR", "IMAGE_SUFFIXES", "PROPERTY_NAMES", "PhotoFix", "PhotoJob", "ground_footprint", "list_photos",
           "localize_photos", "prepare_photos", "reason_kind", "resolve_priors", "summary_line"]
