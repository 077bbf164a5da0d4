"""Seconds to write a saved label as DICOM SEG and RT Structure Set (what a save to the PACS costs before the
upload), this tree's writers against another revision's, side by side in one run, on the shared PACS series:

- TotalSegmentator's label of it (31 structures, smooth outlines: what a trained model gives);
- a noisy label: 3 mm blocks of 60 random classes over the same voxels (what an early or random model gives;
  tens of thousands of outlines).

After one untimed call of each, each writer runs ``--repeats`` times per label, alternating the two revisions;
the median is reported and the ratio reference / this tree (above 1: this tree is faster). The two files are
checked to hold the same contours. Writes ``bench/results/dicom-writers-<tag>.json``.

    python bench/bench_dicom_writers.py --reference 54f3da3   # the commit before the RTSTRUCT change
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "wholebody"
sys.path[:0] = [str(APP), str(ROOT / "tests"), str(ROOT / "bench")]

from revisions import module_at  # noqa: E402

WRITERS = {"seg": ("lib/pacs/seg.py", "write_seg"), "rtstruct": ("lib/pacs/rtstruct.py", "write_rtstruct")}


def writer_at(revision: str, name: str):
    """``write_<name>`` as it was at ``revision`` (what it imports comes from this tree)."""
    path, function = WRITERS[name]
    return getattr(module_at(revision, f"apps/wholebody/{path}", f"reference_{name}"), function)


def writer_here(name: str):
    path, function = WRITERS[name]
    module = importlib.import_module(path[:-3].replace("/", "."))
    return getattr(module, function)


def labels() -> tuple[list[str], dict[str, tuple[np.ndarray, dict[int, str]]]]:
    from conftest import shared_series_with_label

    files, _, frames, names = shared_series_with_label()
    blocks = np.random.default_rng(0).integers(1, 61, size=(frames.shape[0], frames.shape[1] // 4, frames.shape[2] // 4))
    noisy = np.repeat(np.repeat(blocks, 4, axis=1), 4, axis=2).astype(np.uint16)
    noisy[frames == 0] = 0
    return files, {
        "TotalSegmentator label": (frames, names),
        "noisy label": (noisy, {v: f"structure {v}" for v in range(1, 61)}),
    }


def contours(path: Path) -> list:
    import pydicom

    ds = pydicom.dcmread(str(path))
    return [
        (str(c.ContourImageSequence[0].ReferencedSOPInstanceUID), [float(v) for v in c.ContourData])
        for item in ds.ROIContourSequence
        for c in item.ContourSequence
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="git revision whose writers are the reference")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tag", default="vm-cpu")
    args = parser.parse_args()

    files, cases = labels()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in WRITERS:
            candidates = {"reference": writer_at(args.reference, name), "this tree": writer_here(name)}
            for side, write in candidates.items():  # untimed: the first call pays for imports (highdicom, skimage)
                write(files, *cases["TotalSegmentator label"], str(folder / f"{name}-{side}.dcm"))
            for case, (label, names) in cases.items():
                seconds = {side: [] for side in candidates}
                for _ in range(args.repeats):
                    for side, write in candidates.items():
                        start = time.perf_counter()
                        write(files, label, names, str(folder / f"{name}-{side}.dcm"))
                        seconds[side].append(time.perf_counter() - start)
                if name == "rtstruct":
                    assert contours(folder / "rtstruct-reference.dcm") == contours(folder / "rtstruct-this tree.dcm"), case
                medians = {side: statistics.median(v) for side, v in seconds.items()}
                row = {"writer": name, "label": case, **{f"{side} s": round(v, 2) for side, v in medians.items()}}
                row["ratio"] = round(medians["reference"] / medians["this tree"], 2)
                rows.append(row)
                print(f"{name:9s} {case:24s} reference {medians['reference']:6.2f} s   this tree {medians['this tree']:6.2f} s   {row['ratio']:.2f}x")
    out = ROOT / "bench" / "results" / f"dicom-writers-{args.tag}.json"
    out.write_text(json.dumps({"reference": args.reference, "repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
