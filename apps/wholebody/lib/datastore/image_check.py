"""Reads just enough of an image file to refuse what no model here can segment, and a label that
does not lie on its image's voxel grid.

The header is checked before any voxel is read: a file of a few hundred bytes can promise tens of GB
(``max_voxels``), name another file of the server's disk as its voxels (NRRD ``data file``, a NIfTI
header whose magic says its voxels are in a ``.img``), or carry a spacing or direction no grid has.
"""

from __future__ import annotations

import bz2
import gzip
import os
from dataclasses import dataclass

import nibabel as nib
import nrrd
import numpy as np
import torch
from nibabel.openers import ImageOpener

from lib.transforms.label_grid import on_same_grid
from lib.transforms.validate import InvalidImageError, check_ct_volume

NIFTI = (".nii", ".nii.gz")
NRRD = (".seg.nrrd", ".nrrd")
SUPPORTED = NIFTI + NRRD

# A whole-body CT at 0.5 mm (512 x 512 x 2000) has 0.5e9 voxels; --conf max_voxels overrides this.
DEFAULT_MAX_VOXELS = 1_000_000_000

# Single-file NIfTI-1 and NIfTI-2 (magic at byte 344, resp. 4). "ni1"/"ni2" keep the voxels in a
# separate .img file; a header without magic is Analyze 7.5, a .hdr/.img pair too.
_NIFTI_MAGIC = {1: (344, b"n+1\0", b"ni1\0"), 2: (4, b"n+2\0", b"ni2\0")}
_NIFTI_HEADER_SIZE = {348: 1, 540: 2}

# Directions whose volume is below this share of the spacings' product are taken as singular
# (axes that (nearly) coincide: the grid has no third dimension).
MIN_DIRECTION_VOLUME = 1e-3

# NRRD spaces -> sign flips to RAS (what NIfTI and MONAI's readers use).
_TO_RAS = {
    "right-anterior-superior": (1, 1, 1),
    "ras": (1, 1, 1),
    "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "las": (-1, 1, 1),
}


@dataclass(frozen=True)
class ImageHeader:
    shape: tuple[int, ...]  # spatial (3D)
    affine: np.ndarray  # voxel index -> RAS mm
    layers: int = 1  # a Slicer .seg.nrrd with overlapping segments has several

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(round(float(s), 4) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def origin(self) -> tuple[float, ...]:
        return tuple(round(float(o), 3) for o in self.affine[:3, 3])

    @property
    def direction(self) -> tuple[float, ...]:
        return tuple(round(float(d), 3) for d in (self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)).T.ravel())

    def describe(self) -> str:
        return f"shape {self.shape}, spacing {self.spacing}, origin {self.origin}, direction {self.direction} (RAS)"


def extension(path: str) -> str:
    name = os.path.basename(path).lower()
    for ext in SUPPORTED:
        if name.endswith(ext):
            return ext
    return os.path.splitext(name)[1]


def _nrrd_affine(header: dict, spatial_axes: list[int]) -> np.ndarray:
    affine = np.eye(4)
    directions = header.get("space directions")
    if directions is not None:
        rows = np.asarray([directions[a] for a in spatial_axes], dtype=float)
        if rows.shape != (3, 3) or not np.all(np.isfinite(rows)):
            raise InvalidImageError(f"NRRD space directions of the image axes must be finite 3D vectors, got {rows.tolist()}")
        affine[:3, :3] = rows.T
    if header.get("space origin") is not None:
        affine[:3, 3] = np.asarray(header["space origin"], dtype=float)[:3]
    flips = _TO_RAS.get(str(header.get("space", "")).lower())
    if flips is None and header.get("space") is not None:
        raise InvalidImageError(f"unsupported NRRD space '{header['space']}': use left-posterior-superior or right-anterior-superior")
    return np.diag([*(flips or (1, 1, 1)), 1]) @ affine


def _nrrd_header(path: str) -> tuple[tuple[int, ...], np.ndarray, int]:
    """(spatial sizes, affine, layers)."""
    header = nrrd.read_header(path)
    detached = [k for k in header if str(k).replace(" ", "").lower() == "datafile"]
    if detached:
        raise InvalidImageError(
            f"'{os.path.basename(path)}' is a detached NRRD header: its voxels are in another file "
            f"('{detached[0]}: {header[detached[0]]}'); send one .nrrd that holds its voxels"
        )
    sizes = tuple(int(s) for s in header["sizes"])
    _check_voxel_sizes(header)
    kinds = [str(k).lower() for k in header.get("kinds", [])]
    # Slicer writes overlapping segments as a leading "list" axis of layers.
    layered = len(sizes) == 4 and (kinds[:1] in (["list"], ["vector"]) or _no_direction(header, 0))
    if layered:
        return sizes[1:], _nrrd_affine(header, [1, 2, 3]), sizes[0]
    return sizes, _nrrd_affine(header, [0, 1, 2]) if len(sizes) >= 3 else np.eye(4), 1


def _check_voxel_sizes(header: dict) -> None:
    spacings = header.get("spacings")
    if spacings is not None:
        values = np.asarray(spacings, dtype=float)
        given = values[~np.isnan(values)]  # NaN: an axis without spacing (a list of layers)
        if given.size and not np.all(np.isfinite(given) & (given > 0)):
            raise InvalidImageError(f"NRRD spacings must be positive and finite, got {list(values)}")


def _no_direction(header: dict, axis: int) -> bool:
    directions = header.get("space directions")
    if directions is None or len(directions) <= axis:
        return False
    row = directions[axis]
    return row is None or not np.all(np.isfinite(np.asarray(row, dtype=float)))


def _nifti(path: str) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, affine) from the header as written (nibabel's image fixes zero and negative voxel sizes on load)."""
    with ImageOpener(path) as f:
        block = f.read(540)
    name = os.path.basename(path)
    first = block[:4].ljust(4, b"\0")
    version = _NIFTI_HEADER_SIZE.get(int(np.frombuffer(first, "<i4")[0])) or _NIFTI_HEADER_SIZE.get(int(np.frombuffer(first, ">i4")[0]))
    offset, single, pair = _NIFTI_MAGIC[version or 1]
    magic = block[offset : offset + 4]
    if magic == pair:
        raise InvalidImageError(
            f"'{name}' is the header of a NIfTI pair (magic {magic[:3].decode()!r}): its voxels are in another file "
            "(.img); send one .nii or .nii.gz that holds its voxels"
        )
    if version is None or magic != single:
        raise InvalidImageError(
            f"'{name}' is not a single-file NIfTI (no 'n+1' or 'n+2' magic; Analyze and .hdr/.img pairs keep their "
            "voxels in another file)"
        )
    header_class = nib.Nifti1Header if version == 1 else nib.Nifti2Header
    header = header_class(block[: header_class.sizeof_hdr], check=False)
    zooms = np.asarray(header["pixdim"][1 : 1 + min(int(header["dim"][0]), 3)], dtype=float)
    if not np.all(np.isfinite(zooms) & (zooms > 0)):
        raise InvalidImageError(f"voxel sizes (NIfTI pixdim) must be positive and finite, got {[float(z) for z in zooms]}")
    return tuple(int(s) for s in header.get_data_shape()), np.asarray(header.get_best_affine(), dtype=float)


def _check_grid(affine: np.ndarray) -> None:
    matrix = affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    if not np.all(np.isfinite(affine)):
        raise InvalidImageError("the image's spacing, direction or origin is not finite (NaN or Inf)")
    if not np.all(spacing > 0):
        raise InvalidImageError(f"the image's voxel spacing must be positive, got {[round(float(s), 6) for s in spacing]}")
    if abs(np.linalg.det(matrix)) < MIN_DIRECTION_VOLUME * np.prod(spacing):
        raise InvalidImageError(
            f"the image's direction axes are (nearly) parallel: direction {np.round(matrix / spacing, 4).tolist()} spans no 3D grid"
        )


def read_header(path: str, layers_allowed: bool = False, max_voxels: int = DEFAULT_MAX_VOXELS) -> ImageHeader:
    """Raises InvalidImageError when the file is not a readable NIfTI/NRRD that holds its own voxels, not
    3D (a label may have layers: ``layers_allowed``), promises more than ``max_voxels`` voxels, or has no
    proper grid (zero, negative or non-finite spacing; singular direction)."""
    ext = extension(path)
    layers = 1
    try:
        if ext in NIFTI:
            shape, affine = _nifti(path)
        elif ext in NRRD:
            shape, affine, layers = _nrrd_header(path)
        else:
            raise InvalidImageError(f"unsupported image format '{ext}': use {', '.join(SUPPORTED)}")
    except InvalidImageError:
        raise
    except Exception as e:  # nibabel and pynrrd raise many types for garbage input
        raise InvalidImageError(f"cannot read '{os.path.basename(path)}' as {ext} image: {e}") from None
    voxels = int(np.prod([layers, *shape], dtype=np.float64))
    if voxels > max_voxels:
        raise InvalidImageError(
            f"the image header promises {voxels:,} voxels (shape {(layers, *shape) if layers > 1 else shape}), more than "
            f"this server accepts ({max_voxels:,}, --conf max_voxels)"
        )
    squeezed = tuple(s for s in shape[3:] if s != 1)
    if len(shape) < 3 or squeezed or min(shape[:3]) < 2 or (layers > 1 and not layers_allowed):
        full = (layers, *shape) if layers > 1 else shape
        raise InvalidImageError(f"image must be a 3D volume, got shape {full}")
    _check_grid(affine)
    return ImageHeader(shape=shape[:3], affine=affine, layers=layers)


def read_volume(path: str) -> np.ndarray:
    """The voxels of a file whose header passed :func:`read_header`. Compressed voxels are first inflated
    to their end without keeping them: a corrupt stream fails only at its checksum, and one that inflates
    to more than its header promises (a compression bomb: a few MB that inflate to tens of GB, which
    pynrrd would hold in memory) is refused before any reader allocates for it."""
    ext = extension(path)
    name = os.path.basename(path)
    try:
        if ext in NIFTI:
            image = nib.load(path)
            if path.lower().endswith(".gz"):
                header = image.header
                promised = int(header["vox_offset"]) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
                with gzip.open(path) as stream:
                    _inflate_within(stream, promised, name)
            return np.asanyarray(image.dataobj)
        with open(path, "rb") as f:
            header = nrrd.read_header(f)
            opener = _NRRD_COMPRESSED.get(str(header.get("encoding", "raw")).lower())
            if opener:  # the voxels follow the header; the largest NRRD type has 8 bytes
                with opener(f) as stream:
                    _inflate_within(stream, int(np.prod(header["sizes"], dtype=np.float64)) * 8, name)
        return nrrd.read(path)[0]
    except InvalidImageError:
        raise
    except Exception as e:
        raise InvalidImageError(f"cannot read the voxels of '{name}': {e}") from None


def _gunzip(f):
    return gzip.GzipFile(fileobj=f, mode="rb")


_NRRD_COMPRESSED = {"gzip": _gunzip, "gz": _gunzip, "bzip2": bz2.BZ2File, "bz2": bz2.BZ2File}
# Slack over the promised size for what may follow the voxels (NRRD "byte skip", padding).
_INFLATE_SLACK = 1024 * 1024


def _inflate_within(stream, promised: int, name: str) -> None:
    inflated = 0
    while chunk := stream.read(16 * 1024 * 1024):
        inflated += len(chunk)
        if inflated > promised + _INFLATE_SLACK:
            raise InvalidImageError(
                f"'{name}' inflates to more than the {promised:,} bytes its header promises: "
                "a compression bomb or a corrupt file"
            )


def check_ct_file(path: str, max_voxels: int = DEFAULT_MAX_VOXELS) -> ImageHeader:
    """Full check of an upload: readable, 3D, and intensities in Hounsfield units."""
    header = read_header(path, max_voxels=max_voxels)
    volume = read_volume(path).reshape(header.shape)
    check_ct_volume(torch.as_tensor(np.asarray(volume, dtype=np.float32))[None], "image")
    return header


def same_grid(label: ImageHeader, image: ImageHeader) -> bool:
    return on_same_grid(label.shape, label.affine, image.shape, image.affine)


def check_label_file(
    path: str, image: ImageHeader, max_value: int = 255, max_voxels: int = DEFAULT_MAX_VOXELS
) -> tuple[ImageHeader, np.ndarray]:
    """A label must lie on its image's voxel grid (shape and affine; nothing is resampled) and hold
    small non-negative integers. Returns its header and voxels (layers first when it has several)."""
    header = read_header(path, layers_allowed=True, max_voxels=max_voxels)
    if not same_grid(header, image):
        raise InvalidImageError(
            f"the label does not lie on the image's voxel grid: label {header.describe()}; image {image.describe()}. "
            "Save the label on the image's own grid (it is not resampled)"
        )
    label = read_volume(path).reshape(((header.layers,) if header.layers > 1 else ()) + header.shape)
    fractional = np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label))
    if label.size and (fractional or label.min() < 0 or label.max() > max_value):
        raise InvalidImageError(f"label values must be integers in [0, {max_value}]")
    return header, label
