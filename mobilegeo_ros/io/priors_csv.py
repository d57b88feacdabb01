"""Per-photo priors from a CSV file (``mobilegeo localize --priors FILE.csv``).

Format: a header row, then one row per photo. Column ``file`` (required) names the photo: its path relative to the
CSV's folder, an absolute path, or its bare file name (then it matches the photo of that name wherever it is). The
other columns are optional and named as the :class:`mobilegeo_ros.localizer.Priors` fields, in this project's
conventions (degrees, metres, WGS84):

* ``yaw_deg``: compass heading of the image top edge (clockwise from north);
* ``pitch_deg``: camera tilt from nadir towards the image top (0 = straight down), ``roll_deg``: towards the right;
* ``altitude_m``: camera height above the ground;
* ``hfov_deg``: horizontal field of view of the image as stored (after its EXIF orientation);
* ``lat``, ``lon``, ``radius_m``: a prior position and how far from it the camera can be (all three or none).

An empty cell says nothing (the photo's metadata or the command line give that prior). Whole-file mistakes (missing
file, no ``file`` column, an unknown or repeated column) raise :class:`PriorsCsvError` before any photo is read; a
bad cell (not a number, physically impossible), a photo listed twice or a row with too many cells is kept as that
row's error for the one photo it concerns, naming the file, the line and the column; a row without a file name is
listed in ``PriorsTable.problems``.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

#: Columns of a priors CSV besides ``file``, in the order they are written.
PRIOR_COLUMNS = ("yaw_deg", "pitch_deg", "roll_deg", "altitude_m", "hfov_deg", "lat", "lon", "radius_m")
POSITION_COLUMNS = ("lat", "lon", "radius_m")


class PriorsCsvError(ValueError):
    """The priors CSV as a whole cannot be used (one line naming the file)."""


@dataclass
class PriorsRow:
    """One photo's row: ``values`` (column → number) of the non-empty valid cells and ``errors`` (one line each,
    naming the CSV file, the line and the column) of the invalid ones."""

    file: str
    line: int
    values: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass
class PriorsTable:
    """The rows of a priors CSV, looked up by photo path (:meth:`row_for`)."""

    path: Path
    rows: list[PriorsRow]
    problems: list[str] = field(default_factory=list)  # rows that concern no photo (one line each)

    def __post_init__(self) -> None:
        self._by_path: dict[str, PriorsRow] = {}
        self._by_name: dict[str, PriorsRow] = {}
        for row in self.rows:
            if os.sep in row.file or "/" in row.file:
                self._by_path[_key(self.path.parent / row.file)] = row
            else:
                self._by_name[row.file] = row
                self._by_path[_key(self.path.parent / row.file)] = row

    def row_for(self, image: str | Path) -> PriorsRow | None:
        """The row of the photo at ``image``: by path (relative to the CSV's folder), else by its file name."""
        image = Path(image)
        return self._by_path.get(_key(image)) or self._by_name.get(image.name)


def _key(path: Path) -> str:
    return os.path.normcase(str(Path(os.path.abspath(path))))


def read_priors_csv(path: str | Path) -> PriorsTable:
    """Read a priors CSV (see the module docstring; UTF-8, an Excel byte-order mark is fine).

    Raises:
        PriorsCsvError: missing/unreadable file, no ``file`` column, an unknown or repeated column.
    """
    from mobilegeo_ros.localizer import prior_range_error

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PriorsCsvError(f"--priors {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PriorsCsvError(f"--priors {str(path)!r} is not a readable UTF-8 text file ({e})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    if "file" not in header:
        raise PriorsCsvError(f"{path}: line 1: no 'file' column (header {','.join(header)!r}; columns: file, "
                             f"{', '.join(PRIOR_COLUMNS)})")
    unknown = [h for h in header if h != "file" and h not in PRIOR_COLUMNS]
    if unknown:
        raise PriorsCsvError(f"{path}: line 1: unknown column {unknown[0]!r} (known: file, "
                             f"{', '.join(PRIOR_COLUMNS)})")
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise PriorsCsvError(f"{path}: line 1: column {duplicated[0]!r} appears twice")
    rows: list[PriorsRow] = []
    problems: list[str] = []
    by_name: dict[str, PriorsRow] = {}
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue  # blank line
        record = dict(zip(header, (c.strip() for c in cells + [""] * (len(header) - len(cells)))))
        name = record["file"]
        if not name:
            problems.append(f"{path} line {line}, column file: empty (the row is ignored)")
            continue
        if name in by_name:
            by_name[name].errors.append(f"{path} line {line}, column file: {name!r} is given again (first on line "
                                        f"{by_name[name].line})")
            continue
        row = by_name[name] = PriorsRow(name, line)
        if len(cells) > len(header):
            row.errors.append(f"{path} line {line}: {len(cells)} cells for {len(header)} columns")
        for column in PRIOR_COLUMNS:
            text_value = record.get(column, "")
            if not text_value:
                continue
            try:
                value = float(text_value)
            except ValueError:
                row.errors.append(f"{path} line {line}, column {column}: {text_value!r} is not a number")
                continue
            why = prior_range_error(column, value)
            if why:
                row.errors.append(f"{path} line {line}, column {column}: {text_value}: {why}")
                continue
            row.values[column] = value
        given = [c for c in POSITION_COLUMNS if record.get(c, "")]
        if given and len(given) < len(POSITION_COLUMNS):
            missing = [c for c in POSITION_COLUMNS if c not in given]
            row.errors.append(f"{path} line {line}, column {missing[0]}: missing, but lat, lon and radius_m go "
                              "together")
        rows.append(row)
    return PriorsTable(path, rows, problems)


__all__ = ["PRIOR_COLUMNS", "PriorsCsvError", "PriorsRow", "PriorsTable", "read_priors_csv"]
