"""CachedPointWindowInferer == monai's point_based_window_inferer, with the image encoder run once.

The first part uses a REAL, seeded, random-initialised ``vista3d132`` on a crop of the shared CT
preprocessed as the bundle does (1.5 mm, foreground crop, HU scaling, RAS) and cut to 64x64x59, so
that a 64^3 window covers it all: one encoder pass serves every click. Encoder passes are the cost
(~2 s each at 64^3 on a shared 2-core CPU, ~15-20 s at the bundle's 128^3, which tests/e2e/test_vista3d.py
runs), so the clicks run once in a module fixture and are checked by
several tests; key and LRU checks use the same network with a 32^3 window. The remaining path checks
(several windows and NaN outside them, prev_mask / point_start, class + points, the sliding window,
byte accounting) use a tiny VISTA3D built from the same monai classes, which runs in milliseconds.
"""

from __future__ import annotations

import time

import pytest
import torch
from monai.apps.vista3d.inferer import point_based_window_inferer
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInfererAdapt
from monai.networks.nets import vista3d132
from vista3d_testing import pts, same, tiny_vista3d

from conftest import CT
from lib.vista3d.point_inferer import CachedPointWindowInferer, tensor_digest, transform_points

HU_RANGE = (-963.8247715525971, 1053.678477684517)
ROI = (64, 64, 64)
ROI_SMALL = (32, 32, 32)



def reference(net, image, roi, points, labels, **kwargs):
    """The uncached official call (as the bundle's Vista3dInferer makes it)."""
    with torch.no_grad():
        return point_based_window_inferer(
            image, roi, net, points, labels, transpose=True, with_coord=True, **kwargs
        )


def lbl(*values):
    return torch.tensor([list(values)])


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def one_thread():
    """Small windows are many short ops: on 2 shared cores one thread is faster (OpenMP barriers wait on
    the other core). Every comparison in a test runs under the same setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    network = vista3d132(in_channels=1).eval()
    network.image_embeddings = None
    return network


@pytest.fixture(scope="module")
def image():
    """The shared CT through the bundle's preprocessing, cut to 64x64x59 (<= 64^3): [1, 1, H, W, D]."""
    from monai.transforms import (
        CastToTyped,
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    pre = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Spacingd("image", pixdim=(1.5, 1.5, 1.5), mode="bilinear"),
            CropForegroundd("image", source_key="image", margin=10, allow_smaller=True),
            ScaleIntensityRanged("image", a_min=HU_RANGE[0], a_max=HU_RANGE[1], b_min=0, b_max=1, clip=True),
            Orientationd("image", axcodes="RAS"),
            CastToTyped("image", dtype=torch.float32),
        ]
    )
    full = pre({"image": str(CT)})["image"]  # [1, 243, 199, 59]
    crop = full[None][..., 84:148, 66:130, :].clone()
    assert tuple(crop.shape) == (1, 1, 64, 64, 59)
    assert 0.2 < float(crop.mean()) < 0.8  # body, not air
    return crop


@pytest.fixture(scope="module")
def clicks(net, image):
    """Two requests on one image (one window): a positive click, then the same plus a negative click."""
    p1, l1 = pts((32, 32, 30)), lbl(1)
    p2, l2 = pts((32, 32, 30), (12, 50, 20)), lbl(1, 0)
    key = ("example_ct_sm", "crop-64x64x59", "vista3d-1.5mm")
    inf = CachedPointWindowInferer(roi_size=ROI, cache_bytes=1 << 30)
    r: dict = {"inferer": inf}
    with torch.no_grad():
        t = time.perf_counter()
        r["out1"] = inf.point_window(net, image, p1, l1, image_key=key, with_coord=True)
        r["t_first"] = time.perf_counter() - t
        r["stats1"] = inf.stats()

        net.image_embeddings = None
        r["ref1"] = reference(net, image, ROI, p1, l1)  # stock forward: its own encoder pass

        t = time.perf_counter()
        r["out2"] = inf.point_window(net, image, p2, l2, image_key=key, with_coord=True)
        r["t_repeat"] = time.perf_counter() - t
        r["stats2"] = inf.stats()

        # stock forward again, from scratch: window 1 runs the encoder afresh; window 2 (same slices: the image
        # is smaller than the roi) takes it from monai's own keep_cache, which the network keeps after window 1
        net.image_embeddings = None
        r["ref2"] = reference(net, image, ROI, p2, l2, keep_cache=True)
        cached = next(iter(inf._images.values())).windows
        r["cached_embedding"] = next(iter(cached.values()))["point"]
        r["net_embedding"] = net.image_embeddings
        net.image_embeddings = None
    print(
        f"\nvista3d132 64^3 window on this CPU: first click {r['t_first']:.1f} s "
        f"(encoder + head), repeat click {r['t_repeat']:.1f} s (heads only)"
    )
    return r


# ------------------------------------------------------------------ real vista3d132, 64^3, one window
def test_first_click_equals_uncached(clicks, image):
    out, ref = clicks["out1"], clicks["ref1"]
    assert clicks["stats1"]["encoder_runs"] == 1 and clicks["stats1"]["cache_misses"] == 1
    assert out.shape == ref.shape == (1, 1, *image.shape[-3:])
    assert not torch.isnan(out).any()  # one window covers the image
    assert same(out, ref)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, image.affine)
    fg = float((out > 0).float().mean())
    assert 0.01 < fg < 0.99, fg  # the random network's answer varies: the comparison means something


def test_repeat_click_reuses_the_encoder(clicks):
    s1, s2 = clicks["stats1"], clicks["stats2"]
    assert s2["encoder_runs"] == s1["encoder_runs"] == 1
    assert s2["cache_hits"] == s1["cache_hits"] + 1
    assert s2["head_runs"] == s1["head_runs"] + 1  # two points, one window: heads once
    assert s2["head_reuses"] == 1
    assert clicks["t_repeat"] < clicks["t_first"]
    assert torch.equal(clicks["cached_embedding"], clicks["net_embedding"])


def test_repeat_click_changes_the_result_and_equals_uncached(clicks):
    out1, out2, ref2 = clicks["out1"], clicks["out2"], clicks["ref2"]
    assert (out1 != out2).any()
    assert ((out1 > 0) != (out2 > 0)).any()  # the negative click changes the mask, not only logits
    assert same(out2, ref2)


# ------------------------------------------------------------------ real vista3d132, 32^3 windows
def test_changed_image_key_or_content_or_weights_recomputes(net, image, one_thread):
    inf = CachedPointWindowInferer(roi_size=ROI_SMALL, cache_bytes=1 << 28)
    p, l_ = pts((56, 48, 30)), lbl(1)
    a1 = inf.point_window(net, image, p, l_, image_key="a")
    assert inf.encoder_runs == 1 and inf.cache_hits == 0
    a2 = inf.point_window(net, image, p, l_, image_key="a")
    assert inf.encoder_runs == 1 and inf.cache_hits == 1 and same(a1, a2)
    assert torch.isnan(a1).any() and not torch.isnan(a1).all()  # one 32^3 window: NaN elsewhere
    assert same(a1, reference(net, image, ROI_SMALL, p, l_))

    b = inf.point_window(net, image, p, l_, image_key="b")  # another key: computed again
    assert inf.encoder_runs == 2 and same(a1, b)

    changed = image.clone()
    changed[..., 50:60, 40:50, 25:35] += 0.2  # inside the window around the click
    c = inf.point_window(net, changed, p, l_, image_key="a")  # same key, new pixels: never the stale result
    assert inf.encoder_runs == 3 and not same(c, a1)

    inf.point_window(net, image, p, l_)  # no key: the content digest is the key
    d = inf.point_window(net, image, p, l_)
    assert inf.encoder_runs == 4 and same(d, a1)

    with torch.no_grad():  # new weights (same values here): load_state_dict / optimiser steps bump versions
        next(net.image_encoder.parameters()).mul_(1.0)
    e = inf.point_window(net, image, p, l_, image_key="a")
    assert inf.encoder_runs == 5 and same(e, a1)
    f = inf.point_window(net, image, p, l_, image_key="a", model_key="checkpoint-v2")
    assert inf.encoder_runs == 6 and same(f, a1)


def test_lru_eviction_with_a_small_byte_bound(net, image, one_thread):
    window_bytes = 48 * 32**3 * 4  # point-branch embedding of one 32^3 window, float32
    inf = CachedPointWindowInferer(roi_size=ROI_SMALL, cache_bytes=int(2.5 * window_bytes))
    p, l_ = pts((56, 48, 30)), lbl(1)

    def keys():
        return [k[1] for k in inf.cached_image_keys()]

    def run(key):
        return inf.point_window(net, image, p, l_, image_key=key)

    ref = run("A")
    run("B")
    assert inf.encoder_runs == 2 and keys() == ["A", "B"] and inf.nbytes == 2 * window_bytes
    run("A")  # hit: A becomes the most recently used
    assert inf.encoder_runs == 2 and keys() == ["B", "A"]
    run("C")  # over the bound: B, the least recently used, goes
    assert inf.encoder_runs == 3 and keys() == ["A", "C"] and inf.evictions == 1
    assert inf.nbytes == 2 * window_bytes <= inf.cache_bytes
    assert same(run("A"), ref) and inf.encoder_runs == 3  # still cached
    assert same(run("B"), ref) and inf.encoder_runs == 4  # evicted: computed again
    assert keys() == ["A", "B"] and inf.evictions == 2


# ------------------------------------------------------------------ tiny VISTA3D: every path, fast
@pytest.fixture(scope="module")
def tiny():
    return tiny_vista3d(seed=1, encoder_levels=5)


@pytest.fixture(scope="module")
def vol():
    g = torch.Generator().manual_seed(3)
    img = torch.rand((1, 1, 80, 70, 40), generator=g)
    img[..., 20:50, 15:45, 10:30] += 1.0
    return MetaTensor(img, affine=torch.diag(torch.tensor([1.5, 1.5, 1.5, 1.0])))


def test_tiny_points_several_windows_nan_outside(tiny, vol, one_thread):
    inf = CachedPointWindowInferer(roi_size=ROI_SMALL, cache_bytes=1 << 28)
    p = pts((30, 30, 20), (70, 10, 35), (0, 69, 0))  # the last two clamp at the borders; 0 lies outside its own window
    l_ = lbl(1, 0, 1)
    out = inf.point_window(tiny, vol, p, l_, image_key="v")
    ref = reference(tiny, vol, ROI_SMALL, p, l_)
    assert same(out, ref)
    assert torch.isnan(out).any() and not torch.isnan(out).all()
    runs = inf.encoder_runs
    assert runs <= 3
    again = inf.point_window(tiny, vol, p, l_, image_key="v")
    assert same(again, ref) and inf.encoder_runs == runs

    # a click elsewhere: one new window, the others come from the cache
    p2, l2 = torch.cat([p, pts((50, 40, 10))], 1), lbl(1, 0, 1, 0)
    out2 = inf.point_window(tiny, vol, p2, l2, image_key="v")
    assert same(out2, reference(tiny, vol, ROI_SMALL, p2, l2))
    assert inf.encoder_runs == runs + 1


def test_tiny_prev_mask_and_point_start(tiny, vol, one_thread):
    inf = CachedPointWindowInferer(roi_size=ROI_SMALL, cache_bytes=1 << 28)
    p1, l1 = pts((30, 30, 20)), lbl(1)
    first = inf.point_window(tiny, vol, p1, l1, image_key="v")
    p2, l2 = pts((30, 30, 20), (36, 33, 22)), lbl(1, 0)
    kw = dict(prev_mask=first, point_start=1)
    out = inf.point_window(tiny, vol, p2, l2, image_key="v", **kw)
    assert same(out, reference(tiny, vol, ROI_SMALL, p2, l2, prev_mask=first.clone(), point_start=1))
    # 3 x 3 x 3 windows per point; near the corner they coincide: 3 distinct windows, heads run 3 times
    p3, l3 = pts((20, 5, 5)), lbl(1)
    kw = dict(center_only=False, margin=5)
    heads = inf.head_runs
    out = inf.point_window(tiny, vol, p3, l3, image_key="v", **kw)
    assert inf.head_runs == heads + 3 and inf.head_reuses == 24
    assert same(out, reference(tiny, vol, ROI_SMALL, p3, l3, **kw))


def test_tiny_class_and_points(tiny, vol, one_thread):
    inf = CachedPointWindowInferer(roi_size=ROI_SMALL, cache_bytes=1 << 28)
    p, l_ = pts((30, 30, 20), (60, 50, 30)), lbl(1, 0)
    cv = torch.tensor([[3]])
    inf.point_window(tiny, vol, p, l_, image_key="v")  # point branch only
    runs = inf.encoder_runs
    out = inf.point_window(tiny, vol, p, l_, image_key="v", class_vector=cv, prompt_class=cv)
    assert inf.encoder_runs == runs + 2  # the class branch was missing for both windows
    assert same(out, reference(tiny, vol, ROI_SMALL, p, l_, class_vector=cv, prompt_class=cv))
    out = inf.point_window(tiny, vol, p, l_, image_key="v", class_vector=cv, prompt_class=cv)
    assert inf.encoder_runs == runs + 2
    # the bundle wrapper: a new class (> 132) keeps prompt_class and drops class_vector
    new = torch.tensor([[140]])
    out = inf(tiny, vol, p, l_, class_vector=new, image_key="v")
    assert inf.encoder_runs == runs + 2
    assert same(out, reference(tiny, vol, ROI_SMALL, p, l_, class_vector=None, prompt_class=new))


def test_tiny_sliding_window_classes(tiny, vol, one_thread):
    inf = CachedPointWindowInferer(roi_size=ROI_SMALL, cache_bytes=1 << 28)
    sub = vol[..., :50, :40, :28]  # padded in z (replicate), 2 x 2 x 1 windows
    official = SlidingWindowInfererAdapt(roi_size=ROI_SMALL, sw_batch_size=1, with_coord=True, padding_mode="replicate")

    def ref(cv):
        with torch.no_grad():
            return official(
                sub, tiny, transpose=True, point_coords=None, point_labels=None, class_vector=cv, prompt_class=cv,
                prev_mask=None, labels=None, label_set=None,
            )

    cv1, cv2 = torch.tensor([[1], [3]]), torch.tensor([[6]])
    out1 = inf(tiny, sub, class_vector=cv1, image_key="s")
    runs = inf.encoder_runs
    assert runs == 4 and out1.shape == (1, 2, 50, 40, 28)
    assert same(out1, ref(cv1))
    out2 = inf(tiny, sub, class_vector=cv2, image_key="s")
    assert inf.encoder_runs == runs and same(out2, ref(cv2))
    # sliding windows pad by replication, point windows by zeros: same slices, different pixels, not shared
    inf.point_window(tiny, sub, pts((10, 10, 10)), lbl(1), image_key="s")
    assert inf.encoder_runs == runs + 1


def test_tiny_byte_accounting_window_eviction_and_oversize(tiny, vol, one_thread):
    window_bytes = 8 * 32**3 * 4
    inf = CachedPointWindowInferer(roi_size=ROI_SMALL, cache_bytes=int(1.5 * window_bytes))
    p, l_ = pts((30, 30, 20), (70, 60, 35)), lbl(1, 1)  # two windows of one image, room for one
    out = inf.point_window(tiny, vol, p, l_, image_key="v")
    assert inf.encoder_runs == 2 and inf.num_windows == 1 and inf.nbytes == window_bytes and inf.evictions == 1
    assert same(out, reference(tiny, vol, ROI_SMALL, p, l_))

    none = CachedPointWindowInferer(roi_size=ROI_SMALL, cache_bytes=window_bytes - 1)  # nothing fits
    a = none.point_window(tiny, vol, p[:, :1], l_[:, :1], image_key="v")
    b = none.point_window(tiny, vol, p[:, :1], l_[:, :1], image_key="v")
    assert none.encoder_runs == 2 and none.nbytes == 0 and none.num_images == 0 and same(a, b)

    inf.clear()
    assert inf.nbytes == 0 and inf.num_images == 0


def test_tensor_digest_and_transform_points():
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    assert tensor_digest(x) == tensor_digest(x.clone()) == tensor_digest(MetaTensor(x.clone()))
    assert tensor_digest(x) != tensor_digest(x.reshape(3, 2, 4))
    y = x.clone()
    y[1, 2, 3] += 1e-6
    assert tensor_digest(x) != tensor_digest(y)
    # original voxel -> world -> preprocessed voxel (3 mm grid to a 1.5 mm grid shifted by 10 voxels)
    a_orig = torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0]))
    a_pre = torch.diag(torch.tensor([1.5, 1.5, 1.5, 1.0]))
    a_pre[:3, 3] = 15.0
    out = transform_points([[10, 20, 5]], a_orig, a_pre)
    assert out.shape == (1, 1, 3)
    assert torch.allclose(out, torch.tensor([[[10.0, 30.0, 0.0]]], dtype=torch.float64))


def test_model_token_follows_the_weights(tiny):
    import copy

    inf = CachedPointWindowInferer(roi_size=ROI_SMALL)
    token = inf.model_token(tiny)
    assert inf.model_token(tiny) == token
    assert inf.model_token(tiny, model_key="ckpt@1") != token
    twin = copy.deepcopy(tiny)  # same values, another object (a reloaded model): not trusted
    before = inf.model_token(twin)
    assert before != token
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    state["image_encoder.encoder.conv_init.weight"] += 0.01
    twin.load_state_dict(state)  # new weights in place: same object
    after = inf.model_token(twin)
    assert after != before and after[1] == before[1]
    twin.train()
    assert inf.model_token(twin)[-2] is True


def test_tiny_a_bf16_click_never_reuses_fp32_encoder_outputs(tiny, vol, one_thread):
    """``precision`` per request (lib/acceleration/cpu_precision.py): the cache keys windows by the autocast
    state, so a bf16 click after an fp32 one runs the encoder again, and a second bf16 click reuses it."""
    from lib.acceleration import cpu_precision

    inf = CachedPointWindowInferer(roi_size=ROI_SMALL, cache_bytes=1 << 28)
    p, l_ = pts((30, 30, 20)), lbl(1)
    fp32 = inf.point_window(tiny, vol, p, l_, image_key="v")
    assert inf.encoder_runs == 1
    with cpu_precision.autocast("cpu", "bf16"):
        bf16 = inf.point_window(tiny, vol, p, l_, image_key="v")
        assert inf.encoder_runs == 2, "bf16 must not reuse the fp32 encoder output"
        again = inf.point_window(tiny, vol, p, l_, image_key="v")
    assert inf.encoder_runs == 2 and same(again, bf16)
    assert not same(bf16, fp32), "the bf16 click ran in bfloat16"
    assert same(inf.point_window(tiny, vol, p, l_, image_key="v"), fp32) and inf.encoder_runs == 2
