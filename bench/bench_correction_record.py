"""What a correction record costs against the save it follows, on a full-size label (512 x 512 x 397, the
size of the published wholebody anchor), built from the shared CT's TotalSegmentator labels (nearest
neighbour) so that structures have organ shapes. The annotator's label erases half of the largest
structure and grows another by two voxels on 40 slices.

- ``save``: what the server does with a saved label before answering: read and check it against its image
  (lib/datastore/label_file.py) and copy it into the datastore (atomically);
- ``record``: the correction record the server computes after answering (lib/corrections/record.py):
  read both labels, count, surface Dice of the edited structures.

Medians of ``--rounds`` rounds, the two taking turns; ratio record / save from this one run.

    $V/bin/python bench/bench_correction_record.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "apps" / "wholebody")]

from conftest import SEG  # noqa: E402
from lib.corrections.record import correction_record  # noqa: E402
from lib.datastore.atomic import copy_atomically  # noqa: E402
from lib.datastore.image_check import read_header  # noqa: E402
from lib.datastore.label_file import checked_label_info  # noqa: E402

SHAPE = (512, 512, 397)


def labels(folder: Path) -> tuple[Path, Path, Path, dict]:
    seg = nib.load(str(SEG))
    small = np.asarray(seg.dataobj).astype(np.uint8)
    served = ndimage.zoom(small, [t / s for t, s in zip(SHAPE, small.shape)], order=0)
    affine = np.diag([0.8, 0.8, 1.0, 1.0])
    values, counts = np.unique(served[served > 0], return_counts=True)
    largest, other = values[np.argsort(-counts)][:2]
    final = served.copy()
    z = np.nonzero(served == largest)[2]
    final[(served == largest) & (np.arange(SHAPE[2])[None, None, :] < np.median(z))] = 0
    grown = ndimage.binary_dilation(served == other, iterations=2)
    grown[..., 40:] = False
    final[grown & (final == 0)] = other
    paths = folder / "ct.nii.gz", folder / "served.nii.gz", folder / "final.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, dtype=np.int16), affine), str(paths[0]))
    nib.save(nib.Nifti1Image(served, affine), str(paths[1]))
    nib.save(nib.Nifti1Image(final, affine), str(paths[2]))
    names = {f"structure {v}": int(v) for v in values}
    return *paths, names


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ct, served, final, names = labels(Path(tmp))
        image = read_header(str(ct))
        client_info = {"label_info": [{"name": n, "idx": v} for n, v in names.items()]}
        times: dict[str, list[float]] = {"save": [], "record": []}
        for n in range(args.rounds):
            order = ["save", "record"] if n % 2 == 0 else ["record", "save"]
            for what in order:
                start = time.perf_counter()
                if what == "save":
                    info = checked_label_info(str(final), image, client_info)
                    copy_atomically(str(final), str(Path(tmp) / "stored.nii.gz"))
                else:
                    record = correction_record(str(served), {"label_names": names}, str(final), client_info)
                times[what].append(time.perf_counter() - start)
        medians = {k: statistics.median(v) for k, v in times.items()}
        result = {
            "shape": SHAPE,
            "structures": len(names),
            "edited": record["edited"],
            "median_s": {k: round(v, 3) for k, v in medians.items()},
            "record / save": round(medians["record"] / medians["save"], 2),
        }
        assert info["label_info"]
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
