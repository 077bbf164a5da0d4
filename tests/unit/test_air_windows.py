"""No windows on air: the body mask on built volumes, and windows without a mask voxel not run, with the
same labels as running every window wherever the body is."""

from __future__ import annotations

import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import SlidingWindowInferer
from monai.inferers.utils import _get_scan_interval

from lib.heads.merge import MergedArgmax
from lib.inferers.masked_sliding_window import MaskedSlidingWindowInferer
from lib.inferers.streaming_argmax import StreamingArgmaxInferer
from lib.transforms.body_mask import BODY_MASK_KEY, BodyMaskd, body_mask

SPACING = (1.5, 1.5, 1.5)
AIR, TISSUE, LUNG, TABLE = -1000.0, 40.0, -850.0, 300.0


def built_ct(shape=(160, 120, 40)) -> tuple[torch.Tensor, dict[str, tuple[slice, ...]]]:
    """(X, Y, Z) HU: air, a body box with two lungs inside, a table 30 mm below the body (Y is anterior)."""
    g = torch.Generator().manual_seed(0)
    hu = AIR + 20 * torch.randn(shape, generator=g)
    parts = {
        "body": (slice(20, 80), slice(30, 70), slice(0, shape[2])),
        "lung_right": (slice(28, 46), slice(38, 60), slice(0, shape[2])),  # reaches the first and last slices
        "lung_left": (slice(54, 72), slice(38, 60), slice(0, shape[2])),
        "table": (slice(5, 155), slice(5, 10), slice(0, shape[2])),
    }
    hu[parts["body"]] = TISSUE
    hu[parts["lung_right"]] = LUNG
    hu[parts["lung_left"]] = LUNG
    hu[parts["table"]] = TABLE
    return hu, parts


def test_the_body_mask_holds_body_and_lungs_not_air_or_a_table_apart():
    hu, parts = built_ct()
    mask = body_mask(hu, SPACING, threshold_hu=-500, margin_mm=10)
    assert mask.shape == hu.shape and mask.dtype == torch.bool
    assert mask[parts["body"]].all()
    assert mask[parts["lung_right"]].all() and mask[parts["lung_left"]].all(), "lungs are inside the body"
    assert not mask[parts["table"]].any(), "the table does not touch the body"
    assert not mask[100:, :, :].any() and not mask[:, 85:, :].any(), "air around the body"
    # the margin: 10 mm = 6.7 voxels at 1.5 mm, at least that much outside the body's edge
    assert mask[13:20, 30:70, :].all() and mask[80:87, 30:70, :].all()


def test_the_transform_reads_spacing_and_leaves_the_image_alone():
    hu, parts = built_ct()
    from monai.data import MetaTensor

    image = MetaTensor(hu[None].clone(), affine=torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0])))
    out = BodyMaskd(margin_mm=30)({"image": image})
    assert torch.equal(out["image"], image)
    mask = out[BODY_MASK_KEY]
    assert mask.shape == (1, *hu.shape)
    assert mask[0, 10:20, 30:70, :].all(), "30 mm at 3 mm spacing: 10 voxels"
    assert not mask[0, :2, :, :].any()


def _windows(size, roi, overlap):
    return dense_patch_slices(size, roi, _get_scan_interval(size, roi, len(size), (overlap,) * len(size)))


class CountingNet(torch.nn.Module):
    """A fixed random conv net with varied labels; counts the windows it runs."""

    def __init__(self, channels: int = 6):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv3d(1, channels, 3, padding=1)
        self.windows = 0

    def forward(self, x):
        self.windows += x.shape[0]
        return self.conv(x)


def test_skipped_windows_keep_the_labels_wherever_the_body_is():
    hu, parts = built_ct()
    mask = body_mask(hu, SPACING)[None, None]
    image = (hu / 1000.0)[None, None]
    roi = (48, 48, 32)
    net = CountingNet()

    full = StreamingArgmaxInferer(roi, overlap=0.25)(image, net)
    ran_all = net.windows
    net.windows = 0
    skipping = StreamingArgmaxInferer(roi, overlap=0.25, window_mask=mask)
    skipped = skipping(image, net)

    windows = _windows(hu.shape, roi, 0.25)
    expected_run = sum(bool(mask[(0, 0, *w)].any()) for w in windows)
    assert ran_all == len(windows)
    assert skipping.windows == {"run": expected_run, "skipped": len(windows) - expected_run}
    assert net.windows == expected_run and 0 < expected_run < len(windows)
    assert len(torch.unique(full[mask])) > 3, "the network's labels vary: the comparison is sensitive"
    assert torch.equal(skipped[mask], full[mask])
    # voxels that only skipped windows cover are background; those that no skipped window covers keep their labels
    run_covers, skipped_covers = torch.zeros_like(mask), torch.zeros_like(mask)
    for w in windows:
        (run_covers if mask[(0, 0, *w)].any() else skipped_covers)[(0, 0, *w)] = True
    assert (skipped[~run_covers] == 0).all() and (~run_covers).any()
    assert torch.equal(skipped[~skipped_covers], full[~skipped_covers])
    assert (full[~run_covers] != 0).any(), "background there comes from the skipping, not from the network"


def test_a_structure_at_the_body_edge_is_kept_in_the_margin():
    """A structure in air just outside the threshold (3 voxels from the skin) lies in the margin: the windows
    that hold it run, and the network's label for it is the same as without skipping."""
    hu, parts = built_ct()
    mask = body_mask(hu, SPACING, margin_mm=10)
    structure = (slice(80, 83), slice(40, 50), slice(10, 20))  # outside the body box (x < 80), in air
    assert not (hu[structure] > -500).any() and mask[structure].all()
    image = (hu / 1000.0)[None, None]
    image[(0, 0, *structure)] = 2.0  # something the network sees there
    net = CountingNet()
    full = StreamingArgmaxInferer((48, 48, 32), overlap=0.25)(image, net)
    skipped = StreamingArgmaxInferer((48, 48, 32), overlap=0.25, window_mask=mask[None, None])(image, net)
    assert torch.equal(skipped[(0, 0, *structure)], full[(0, 0, *structure)])


def test_no_body_runs_no_window_and_gives_background():
    image = torch.zeros((1, 1, 64, 64, 32))
    inferer = StreamingArgmaxInferer((32, 32, 32), window_mask=torch.zeros((1, 1, 64, 64, 32), dtype=torch.bool))
    net = CountingNet()
    labels = inferer(image, net)
    assert net.windows == 0 and inferer.windows["run"] == 0 and inferer.windows["skipped"] > 0
    assert labels.shape == (1, 1, 64, 64, 32) and (labels == 0).all()


def test_monai_averaging_inferer_keeps_its_output_on_the_mask_and_pads_the_mask_as_the_image():
    """spleen's inferer: MONAI's averaging sliding window, windows without a mask voxel not run (z is shorter
    than the window, so MONAI pads the image and the mask must follow)."""
    hu, parts = built_ct((160, 120, 20))
    mask = body_mask(hu, SPACING)[None, None]
    image = (hu / 1000.0)[None, None]
    net = CountingNet(channels=2)
    args = dict(roi_size=(48, 48, 32), sw_batch_size=4, overlap=0.5)
    full = SlidingWindowInferer(**args)(image, net)
    masked = MaskedSlidingWindowInferer(**args, out_channels=2, window_mask=mask)
    out = masked(image, net)
    assert masked.windows["skipped"] > 0 and masked.windows["run"] > 0
    m = mask[0, 0]
    assert torch.equal(out[0][:, m], full[0][:, m])
    labels_full, labels = full.argmax(1)[0], out.argmax(1)[0]
    assert len(torch.unique(labels_full[m])) == 2, "both classes inside the body: a sensitive comparison"
    assert (labels[hu.shape[0] - 5 :, 100:, :] == 0).all(), "far air: only skipped windows, background"
    plain = MaskedSlidingWindowInferer(**args, out_channels=2)(image, net)
    assert torch.equal(plain, full), "without a mask it is MONAI's inferer"


def test_skipped_windows_with_decoder_heads_merge_keep_background():
    """``reduce`` (decoder heads' merge) only sees finished sums of run windows: voxels that only skipped
    windows cover stay 0, not a head's label, and the body's labels are the merge's without skipping."""
    hu, parts = built_ct((160, 120, 20))
    mask = body_mask(hu, SPACING)[None, None]
    image = (hu / 1000.0)[None, None]
    net = CountingNet(channels=6)  # 4 base channels + a head of one structure (its background and itself)
    merge = MergedArgmax(4, [[200]], "new")
    full = StreamingArgmaxInferer((48, 48, 32), reduce=merge)(image, net)
    skipping = StreamingArgmaxInferer((48, 48, 32), reduce=merge, window_mask=mask)
    skipped = skipping(image, net)
    m = mask[0, 0]
    assert skipping.windows["skipped"] > 0
    assert (full[0, 0][m] == 200).any() and torch.equal(skipped[0, 0][m], full[0, 0][m])
    assert (skipped[0, 0, 150:, 110:, :] == 0).all() and (full[0, 0, 150:, 110:, :] != 0).any()
