"""``<out>/measurements.csv``: the cohort table of a batch run, one row per study and structure.

Each study's rows are written (atomically) to ``<out>/measurements/<study>.csv`` by the stage that writes
its label, so they survive a crash exactly as the labels do; at the end of every run the driver assembles
the table from the studies the manifest holds as done, in study order. A rerun that skips a study keeps its
rows; a study done again replaces them.

CSV, not Parquet: a few hundred kilobytes per thousand studies (104 rows each), opened as it is by a
spreadsheet, R or pandas, and per-study files concatenate line by line; Parquet would need pyarrow on every
reader and a rewrite of the whole file to add a study.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Iterable

from lib.datastore.atomic import write_atomically

TABLE = "measurements.csv"
FOLDER = "measurements"
_FIGURES = ("voxels", "volume_ml", "hu_mean", "hu_std", "hu_median", "hu_p5", "hu_p95")
COLUMNS = (
    "study", "structure", "label", *_FIGURES,
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "bbox_min_x_mm", "bbox_min_y_mm", "bbox_min_z_mm", "bbox_max_x_mm", "bbox_max_y_mm", "bbox_max_z_mm",
)  # fmt: skip


def rows(study: str, measurements: Iterable[dict[str, Any]]) -> list[list[Any]]:
    """``lib.measurements`` figures of one study as table rows (coordinates: LPS millimetres)."""
    return [
        [study, m["name"], m["label"], *(m[f] for f in _FIGURES), *m["centroid_lps_mm"], *m["bbox_lps_mm"][0], *m["bbox_lps_mm"][1]]
        for m in measurements
    ]


def write_study(out_dir: str, study: str, measurements: Iterable[dict[str, Any]]) -> str:
    """The study's rows, with the header, in ``measurements/<study>.csv``; returns that path relative to ``out_dir``."""
    relative = os.path.join(FOLDER, f"{study}.csv")
    os.makedirs(os.path.join(out_dir, FOLDER), exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows(study, measurements))
    write_atomically(os.path.join(out_dir, relative), lambda f: f.write(text.getvalue().encode()))
    return relative


def assemble(out_dir: str, study_files: dict[str, str]) -> str:
    """``measurements.csv`` from the per-study files (study -> path relative to ``out_dir``), in study order."""
    path = os.path.join(out_dir, TABLE)

    def write(f):
        f.write((",".join(COLUMNS) + "\n").encode())
        for study in sorted(study_files):
            with open(os.path.join(out_dir, study_files[study]), "rb") as part:
                part.readline()  # its header
                f.write(part.read())

    write_atomically(path, write)
    return path
