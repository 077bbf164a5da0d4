"""Synthetic whole-body CT phantom: a sample study for a server that has no data yet.

The anatomy is laid out in a reference field of view (360 x 300 x 240 mm along x, y, z)
and stretched to the requested grid, so any shape shows the whole trunk; ``spacing`` only
sets the voxel size written into the affine. World axes are RAS+ (NIfTI, nibabel axcodes
R, A, S): x grows towards the patient's right, y anterior, z superior, so the liver sits at +x.
"""

from __future__ import annotations

import argparse
import gzip
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

PHANTOM_NAME = "phantom_ct.nii.gz"

# Indices of the wholeBody_ct_segmentation bundle output channels (background = 0).
LABELS: dict[str, int] = {
    "spleen": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "liver": 5,
    "aorta": 7,
    "lung_upper_lobe_left": 13,
    "lung_lower_lobe_left": 14,
    "lung_upper_lobe_right": 15,
    "lung_middle_lobe_right": 16,
    "lung_lower_lobe_right": 17,
}
# The bundle numbers the spine from L5 (18) upwards, one index per level, up to C1 (41).
VERTEBRA_NAMES = (
    ["L5", "L4", "L3", "L2", "L1"]
    + [f"T{i}" for i in range(12, 0, -1)]
    + [f"C{i}" for i in range(7, 0, -1)]
)
VERTEBRA_L5_INDEX = 18
VERTEBRA_LABELS: dict[str, int] = {
    f"vertebrae_{name}": VERTEBRA_L5_INDEX + level for level, name in enumerate(VERTEBRA_NAMES)
}

REFERENCE_FOV_MM = (360.0, 300.0, 240.0)


@dataclass
class Phantom:
    """A CT volume in HU (int16), its wholeBody bundle label map (uint8) and RAS affine."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


class _Grid:
    """Open (broadcastable) reference-mm coordinates of the voxel centres."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        axes = [
            (np.arange(n, dtype=np.float32) - (n - 1) / 2) * (fov / n)
            for n, fov in zip(shape, REFERENCE_FOV_MM)
        ]
        self.x = axes[0][:, None, None]
        self.y = axes[1][None, :, None]
        self.z = axes[2][None, None, :]

    def ellipse(self, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        """Infinite elliptic cylinder along z; shape (X, Y, 1)."""
        return ((self.x - cx) / ax) ** 2 + ((self.y - cy) / ay) ** 2 <= 1.0

    def ellipsoid(self, centre: tuple[float, float, float], semi: tuple[float, float, float]) -> np.ndarray:
        (cx, cy, cz), (ax, ay, az) = centre, semi
        return ((self.x - cx) / ax) ** 2 + ((self.y - cy) / ay) ** 2 + ((self.z - cz) / az) ** 2 <= 1.0

    def z_slab(self, lo: float, hi: float) -> np.ndarray:
        return (self.z >= lo) & (self.z < hi)


def ras_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Diagonal RAS+ affine that puts the volume centre at world (0, 0, 0)."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=float) - 1) / 2 * np.asarray(spacing, dtype=float)
    return affine


def make_phantom(
    shape: tuple[int, int, int] = (120, 100, 80),
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
    seed: int = 0,
    variation: float = 0.0,
    contrast: bool = False,
) -> Phantom:
    """Build the phantom; ``variation`` in [0, 1] scales random changes of anatomy and HU.

    With ``variation=0`` the anatomy is fixed and ``seed`` only changes the image noise.
    ``contrast`` gives the aorta an arterial-phase 150 HU instead of blood's 40 HU.
    """
    if not 0.0 <= variation <= 1.0:
        raise ValueError(f"variation must be in [0, 1], got {variation}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3-D with at least 8 voxels per axis, got {shape}")
    rng = np.random.default_rng(seed)

    # Every draw happens whatever `variation` is, so the stream (and the noise after it)
    # stays aligned and variation=0 reproduces the canonical anatomy for every seed.
    def jitter(amount: float) -> float:
        return variation * amount * float(rng.uniform(-1.0, 1.0))

    def scaled(value: float, rel: float = 0.12) -> float:
        return value * (1.0 + jitter(rel))

    def hu(value: float, spread: float = 8.0) -> float:
        return value + jitter(spread)

    g = _Grid(shape)
    image = np.empty(shape, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)

    def paint(mask: np.ndarray, value: float, index: int = 0) -> None:
        mask = np.broadcast_to(mask, shape)
        image[mask] = value
        label[mask] = index

    # Body wall: subcutaneous fat rim around soft tissue.
    body_a, body_b = scaled(160.0, 0.1), scaled(115.0, 0.1)
    body_cx = jitter(8.0)
    fat = scaled(12.0, 0.5)
    inner = g.ellipse(body_cx, 0.0, body_a - fat, body_b - fat)
    image[:] = hu(-1000.0, 5.0)
    paint(g.ellipse(body_cx, 0.0, body_a, body_b), hu(-100.0, 15.0))
    paint(inner, hu(40.0))

    # Liver (patient right, +x) and spleen sit under the diaphragm domes; the lungs are
    # kept a diaphragm's thickness away from them so their bases wrap around the domes.
    liver_c = (62.0 + jitter(10.0) + body_cx, 15.0 + jitter(8.0), -15.0 + jitter(12.0))
    liver_semi = (scaled(80.0), scaled(68.0), scaled(55.0))
    # A plane trims the inferior-left edge so the liver tapers towards the midline.
    liver_cut = (g.z - liver_c[2]) > -0.6 * (g.x - liver_c[0]) - 45.0
    liver = g.ellipsoid(liver_c, liver_semi) & liver_cut
    spleen_c = (-88.0 + jitter(8.0) + body_cx, -40.0 + jitter(8.0), 5.0 + jitter(12.0))
    spleen_semi = (scaled(30.0), scaled(45.0), scaled(45.0))
    spleen = g.ellipsoid(spleen_c, spleen_semi)
    diaphragm = 6.0
    liver_dome = g.ellipsoid(liver_c, tuple(a + diaphragm for a in liver_semi)) & liver_cut
    spleen_dome = g.ellipsoid(spleen_c, tuple(a + diaphragm for a in spleen_semi))

    # The oblique fissure runs from posterior-superior to anterior-inferior, so the lower
    # lobe is the posterior-inferior part of each lung.
    lung_hu = hu(-850.0, 30.0)
    lung_z, lung_y = 85.0 + jitter(12.0), -5.0 + jitter(6.0)
    lung_semi = (scaled(52.0), scaled(72.0), scaled(95.0))
    chest_inside = g.ellipse(body_cx, 0.0, body_a - fat - 8.0, body_b - fat - 8.0) & ~liver_dome & ~spleen_dome
    lower = g.z < 45.0 + jitter(10.0) - 0.9 * (g.y - lung_y)
    for side in (+1, -1):
        lung = g.ellipsoid((side * scaled(78.0, 0.08) + body_cx, lung_y, lung_z), lung_semi) & chest_inside
        if side > 0:
            middle = ~lower & (g.y > lung_y) & (g.z < 60.0 + jitter(10.0))
            paint(lung & lower, lung_hu, LABELS["lung_lower_lobe_right"])
            paint(lung & middle, lung_hu, LABELS["lung_middle_lobe_right"])
            paint(lung & ~lower & ~middle, lung_hu, LABELS["lung_upper_lobe_right"])
        else:
            paint(lung & lower, lung_hu, LABELS["lung_lower_lobe_left"])
            paint(lung & ~lower, lung_hu, LABELS["lung_upper_lobe_left"])
    paint(liver, hu(60.0), LABELS["liver"])
    paint(spleen, hu(45.0), LABELS["spleen"])

    kidney_hu, kidney_semi = hu(30.0), (scaled(26.0), scaled(30.0), scaled(48.0))
    for side, name, cz in ((+1, "kidney_right", -58.0), (-1, "kidney_left", -46.0)):
        centre = (side * (62.0 + jitter(6.0)) + body_cx, -55.0 + jitter(6.0), cz + jitter(10.0))
        paint(g.ellipsoid(centre, kidney_semi), kidney_hu, LABELS[name])

    # Spine: vertebral bodies (cortical shell around cancellous bone) separated by discs,
    # with a posterior arch; the aorta runs left-anterior of it.
    spine_x, spine_y = body_cx + jitter(4.0), -40.0 + jitter(6.0)
    vb_a, vb_b = scaled(20.0, 0.1), scaled(17.0, 0.1)
    cortex = 3.0
    aorta_r = scaled(11.0, 0.2)
    aorta = g.ellipse(spine_x - 18.0 + jitter(4.0), spine_y + vb_b + aorta_r + 2.0, aorta_r, aorta_r)
    paint(aorta, hu(150.0 if contrast else 40.0), LABELS["aorta"])

    body_xy = g.ellipse(spine_x, spine_y, vb_a, vb_b)
    marrow_xy = g.ellipse(spine_x, spine_y, vb_a - cortex, vb_b - cortex)
    arch_xy = g.ellipse(spine_x, spine_y - vb_b - 18.0, 6.0, 20.0)
    pitch, disc = scaled(27.0, 0.08), 5.0
    # Anchored so that L2 sits at the kidney hila, as in an adult.
    l5_z = -55.0 - 3 * pitch + jitter(8.0)
    cortical_hu, cancellous_hu, disc_hu = hu(700.0, 50.0), hu(250.0, 30.0), hu(80.0, 5.0)
    half_height = (pitch - disc) / 2
    for level, name in enumerate(VERTEBRA_NAMES):
        cz = l5_z + level * pitch
        if cz + half_height < float(g.z.min()) or cz - half_height > float(g.z.max()):
            continue
        index = VERTEBRA_LABELS[f"vertebrae_{name}"]
        slab = g.z_slab(cz - half_height, cz + half_height)
        paint((body_xy | arch_xy) & slab, cortical_hu, index)
        paint(marrow_xy & g.z_slab(cz - half_height + cortex, cz + half_height - cortex), cancellous_hu, index)
        paint(body_xy & g.z_slab(cz + half_height, cz + half_height + disc), disc_hu)

    noise_sigma = scaled(15.0, 0.3)
    image += rng.normal(0.0, noise_sigma, size=shape).astype(np.float32)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return Phantom(image=image, label=label, affine=ras_affine(shape, spacing))


def _nifti(data: np.ndarray, affine: np.ndarray, description: str) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    header = img.header
    header.set_data_dtype(data.dtype)
    header.set_xyzt_units("mm", "sec")
    # Scanner-anat codes on both forms so every reader (ITK, MONAI, OHIF) agrees on orientation.
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    header["descrip"] = description.encode()[:79]
    return img


def _atomic_write(img: nib.Nifti1Image, path: Path) -> None:
    # A datastore watching the folder must never see a half-written study. The unique
    # dot name is opened with "x" rather than mkstemp so the file gets umask permissions.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "xb") as f:
            f.write(gzip.compress(img.to_bytes(), compresslevel=6))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_phantom(path: str | os.PathLike, label_path: str | os.PathLike | None = None, **kwargs) -> bool:
    """Write the phantom CT (and its label when ``label_path`` is given) unless ``path`` exists.

    ``kwargs`` go to :func:`make_phantom`. Returns whether anything was written.
    """
    path = Path(path)
    if path.exists():
        return False
    phantom = make_phantom(**kwargs)
    # Label first: once the CT exists the study counts as complete and is never rewritten.
    if label_path is not None:
        _atomic_write(_nifti(phantom.label, phantom.affine, "synthetic phantom label"), Path(label_path))
    _atomic_write(_nifti(phantom.image, phantom.affine, "synthetic CT phantom (HU)"), path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.phantom", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help=f"folder that receives {PHANTOM_NAME}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variation", type=float, default=0.0, help="0 (canonical) to 1 (most varied)")
    parser.add_argument("--with-label", type=Path, metavar="DIR", help=f"also write the label as DIR/{PHANTOM_NAME}")
    args = parser.parse_args(argv)

    out = args.out_dir / PHANTOM_NAME
    label = args.with_label / PHANTOM_NAME if args.with_label else None
    try:
        written = write_phantom(out, label, seed=args.seed, variation=args.variation)
    except ValueError as e:
        parser.error(str(e))
    if not written:
        print(f"{out} already exists; left as is")
    elif label:
        print(f"wrote {out} and {label}")
    else:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
