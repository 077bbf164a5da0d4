"""The cohort table: per-study rows written where the label is, assembled in study order by the driver."""

from __future__ import annotations

import numpy as np
import pandas
import pytest

from lib.batch import cohort
from lib.measurements.structures import measure


def test_table_holds_one_row_per_study_and_structure(tmp_path):
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[1:3, 1:3, 1:3], labels[4:, :, 3] = 1, 2
    hu = np.arange(labels.size, dtype=np.int16).reshape(labels.shape)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    files = {
        "b_study": cohort.write_study(str(tmp_path), "b_study", measure(labels, hu, affine, {1: "liver", 2: "spleen"})),
        "a_study": cohort.write_study(str(tmp_path), "a_study", measure((labels == 1).astype(np.uint8), hu, affine, {1: "liver"})),
    }
    table = pandas.read_csv(cohort.assemble(str(tmp_path), files))
    assert list(table.columns) == list(cohort.COLUMNS)
    assert table[["study", "structure", "label"]].values.tolist() == [["a_study", "liver", 1], ["b_study", "liver", 1], ["b_study", "spleen", 2]]
    spleen = table.iloc[2]
    assert spleen["voxels"] == 10 and spleen["volume_ml"] == 10 * 4.5 / 1000
    assert spleen["hu_mean"] == hu[labels == 2].mean() and spleen["hu_p95"] == pytest.approx(np.percentile(hu[labels == 2], 95))
    assert (spleen["centroid_x_mm"], spleen["bbox_min_z_mm"], spleen["bbox_max_x_mm"]) == (-4.5 * 1.5, 6.0, -4 * 1.5)
