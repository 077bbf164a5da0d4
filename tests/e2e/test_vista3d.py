"""VISTA3D through the server: parity with the bundle pipeline, a Slicer click session on the encoder
cache, the bad inputs of clicks, finetuning to a new structure, and no weights.

One server for the module, with a random-initialised (seeded) ``vista3d132`` in the official layout and
a 64x64x30 crop of the shared CT (3 mm; 128x128x60 at the bundle's 1.5 mm, so one 128^3 window covers
it and every click shares that window). An image-encoder pass costs ~15-40 s on this shared 2-core CPU:
the tests are ordered so that each one adds as few as possible, and finetuning (which changes the
weights) runs last.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests
import torch

from conftest import CT, Server, free_port, slicer_client_class, wait_for_training

pytestmark = pytest.mark.e2e

HU_WINDOW = (-963.8247715525971, 1053.678477684517)
ROI = (128, 128, 128)
CROP = (slice(40, 104), slice(20, 84), slice(None))  # liver, right kidney, spine: 64x64x30 voxels
LIVER_V2, KIDNEY_RIGHT_V2 = 5, 2  # values in the TotalSegmentator v2 label of the shared CT
POSITIVE = [30, 30, 15]  # voxel of the crop (liver)
SLICER = {"result_extension": ".nrrd", "result_dtype": "uint8"}
NEW_NAME = "made up structure"


def write_crop(src: Path, dst: Path) -> None:
    image = nib.load(str(src))
    nib.save(image.slicer[CROP], str(dst))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vista3d")


@pytest.fixture(scope="module")
def network():
    from monai.networks.nets import vista3d132

    torch.manual_seed(0)
    return vista3d132(in_channels=1).eval()


@pytest.fixture(scope="module")
def server(root, network):
    studies, model_dir = root / "studies", root / "model"
    studies.mkdir()
    write_crop(CT, studies / "crop.nii.gz")
    official = model_dir / "vista3d" / "models" / "model.pt"
    official.parent.mkdir(parents=True)
    torch.save(network.state_dict(), official)
    conf = {"models": "vista3d", "weights_url": f"http://127.0.0.1:{free_port()}/"}
    s = Server(studies, model_dir, conf, root / "server.log")
    yield s
    s.stop()


def infer(server: Server, model: str, params: dict, image: str = "crop") -> tuple[np.ndarray, dict]:
    client = slicer_client_class()(server.url, tmpdir=str(server.log.parent))
    result, answer = client.infer(model, image, params)
    if result.endswith(".nrrd"):
        return nrrd.read(result)[0], answer
    return np.asarray(nib.load(result).dataobj), answer


def post(server: Server, model: str, params: dict, image: str = "crop") -> requests.Response:
    return requests.post(
        f"{server.url}/infer/{model}", params={"image": image}, data={"params": json.dumps(params)}, timeout=900
    )


# ----------------------------------------------------------------------------- the bundle, rebuilt
def bundle_reference(path: str, network, label_prompt=None, points=None, point_labels=None) -> np.ndarray:
    """The vista3d bundle's inference.json + scripts/evaluator.py + scripts/inferer.py, from MONAI pieces."""
    from monai.apps.vista3d.inferer import point_based_window_inferer
    from monai.apps.vista3d.transforms import VistaPostTransformd, VistaPreTransformd
    from monai.inferers import SlidingWindowInfererAdapt
    from monai.transforms import (
        CastToTyped,
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        EnsureTyped,
        Invertd,
        Lambdad,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    table = json.loads((Path(__file__).parents[2] / "apps/wholebody/lib/labels/vista3d_classes.json").read_text())
    subclass = {"2": [14, 5], "20": [28, 29, 30, 31, 32], "21": list(range(33, 57)) + list(range(63, 98)) + [114, 120, 122]}
    pre = Compose(
        [
            LoadImaged(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            EnsureTyped(keys="image", device="cpu", track_meta=True),
            Spacingd(keys="image", pixdim=[1.5, 1.5, 1.5], mode="bilinear"),
            CropForegroundd(keys="image", allow_smaller=True, margin=10, source_key="image"),
            VistaPreTransformd(keys="image", subclass=subclass, labels_dict=table),
            ScaleIntensityRanged(keys="image", a_min=HU_WINDOW[0], a_max=HU_WINDOW[1], b_min=0, b_max=1, clip=True),
            Orientationd(keys="image", axcodes="RAS"),
            CastToTyped(keys="image", dtype=torch.float32),
        ]
    )
    data = pre({"image": path, "label_prompt": label_prompt, "points": points, "point_labels": point_labels})
    inputs = data["image"][None]
    # evaluator: prompts to tensors, points from the original image's voxels to the preprocessed grid
    cv = torch.as_tensor(data["label_prompt"]).unsqueeze(-1) if data["label_prompt"] is not None else None
    pts = labels = None
    if points is not None:
        affine = np.linalg.inv(inputs.affine.numpy()) @ np.asarray(inputs.meta["original_affine"])
        p = np.concatenate([np.asarray([points], dtype=np.float64), np.ones((1, len(points), 1))], axis=-1)
        pts = torch.from_numpy((p @ affine.T)[..., :3])
        labels = torch.as_tensor([data["point_labels"]])
    # inferer (use_point_window): points -> windows around them, otherwise the sliding window
    prompt_class = copy.deepcopy(cv)
    if cv is not None and torch.any(cv > network.point_head.last_supported):
        cv = None
    with torch.no_grad():
        if pts is not None:
            # one window per click; here they are all the same window (the image fits one), so monai's own
            # keep_cache lets the second reuse the first's embedding: the same output, one encoder pass less
            assert all(n <= r for n, r in zip(inputs.shape[-3:], ROI)), "keep_cache is only right for one window"
            network.image_embeddings = None
            out = point_based_window_inferer(
                inputs, ROI, network, pts, labels, class_vector=cv, prompt_class=prompt_class, transpose=True,
                with_coord=True, sw_batch_size=1, mode="gaussian", overlap=0.3, prev_mask=None, labels=None,
                label_set=None, keep_cache=cv is None,
            )
            network.image_embeddings = None
        else:
            out = SlidingWindowInfererAdapt(roi_size=ROI, sw_batch_size=1, with_coord=True, padding_mode="replicate")(
                inputs, network, transpose=True, point_coords=None, point_labels=None, class_vector=cv,
                prompt_class=prompt_class, prev_mask=None, labels=None, label_set=None,
            )
    result = {"image": data["image"], "pred": out[0], "label_prompt": prompt_class, "points": pts, "point_labels": labels}
    post = Compose(
        [
            VistaPostTransformd(keys="pred"),
            Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True),
            Lambdad(keys="pred", func=lambda x: torch.nan_to_num(x, nan=255)),
        ]
    )
    return np.asarray(post(result)["pred"][0]).astype(np.int64)


# ----------------------------------------------------------------------------- tests
def test_info_lists_both_tasks_with_the_class_table(server):
    models = server.info()["models"]
    auto, point = models["vista3d"], models["vista3d_point"]
    assert auto["type"] == "segmentation" and point["type"] == "deepgrow"
    for model in (auto, point):
        assert model["labels"]["liver"] == 1 and model["labels"]["left kidney"] == 14 and len(model["labels"]) == 132
        assert model["untrained"] is False
    assert auto["config"]["label_prompt"] == "everything"


def test_class_prompt_matches_the_bundle(server, network):
    ours, answer = infer(server, "vista3d", {"label_prompt": [3], "result_extension": ".nii.gz"})
    reference = bundle_reference(str(server.studies / "crop.nii.gz"), network, label_prompt=[3])
    reference[reference == 255] = 0
    assert ours.shape == reference.shape == (64, 64, 30)
    foreground = float((reference == 3).mean())
    agreement = float((ours == reference).mean())
    print(f"\nvista3d class prompt: agreement {agreement:.6f}, foreground {foreground:.3f}")
    assert 0.01 < foreground < 0.99, "a random network's answer must vary for the comparison to mean anything"
    assert agreement >= 0.999
    assert answer["label_names"] == {"spleen": 3}


def test_points_match_the_bundle(server, network):
    negative = [10, 50, 20]
    ours, answer = infer(
        server,
        "vista3d_point",
        {"foreground": [POSITIVE], "background": [negative], "label": "new thing", "result_extension": ".nii.gz"},
    )
    reference = bundle_reference(str(server.studies / "crop.nii.gz"), network, points=[POSITIVE, negative], point_labels=[1, 0])
    assert 255 not in ours
    reference[reference == 255] = 0
    foreground = float((reference == 1).mean())
    agreement = float((ours == reference).mean())
    print(f"\nvista3d points: agreement {agreement:.6f}, foreground {foreground:.3f}")
    assert 0.01 < foreground < 0.99
    assert agreement >= 0.999
    assert answer["label_names"] == {"new thing": 1}
    assert answer["vista3d"]["mode"] == "points"


def test_slicer_session_repeat_click_reuses_the_encoder(server, root):
    client = slicer_client_class()(server.url, tmpdir=str(root))
    session = client.create_session(str(server.studies / "crop.nii.gz"))["session_id"]

    def click(foreground, background):
        params = {**SLICER, "label": "my segment", "foreground": foreground, "background": background}
        start = time.perf_counter()
        result, answer = client.infer("vista3d_point", "", params, session_id=session)
        return nrrd.read(result)[0], answer, time.perf_counter() - start

    first, answer1, t1 = click([POSITIVE], [])
    assert first.dtype == np.uint8 and first.shape == (64, 64, 30) and set(np.unique(first)) <= {0, 1}
    assert answer1["label_names"] == {"my segment": 1}
    assert answer1["vista3d_cache"]["request"]["encoder_runs"] == 1  # a session's image: a new file to the cache
    x, y, z = POSITIVE
    assert first[x - 1 : x + 2, y - 1 : y + 2, z - 1 : z + 2].any(), "the segment grows from the click"

    # the annotator removes part of the segment with a negative click far from the positive one
    fg = np.argwhere(first == 1)
    negative = fg[np.argmax(np.abs(fg - np.array(POSITIVE)).sum(1))].tolist()
    second, answer2, t2 = click([POSITIVE], [negative])
    request = answer2["vista3d_cache"]["request"]
    print(f"\nSlicer session: first click {t1:.1f} s, repeat click {t2:.1f} s; repeat request counters {request}")
    assert request["encoder_runs"] == 0 and request["cache_hits"] >= 1 and request["preprocessing"] == "cached"
    assert answer2["latencies"]["infer"] < answer1["latencies"]["infer"]
    x, y, z = negative
    near = (slice(max(x - 3, 0), x + 4), slice(max(y - 3, 0), y + 4), slice(max(z - 2, 0), z + 3))
    assert (first[near] != second[near]).any(), "the negative click changed nothing where it was placed"
    assert 255 not in second


@pytest.mark.parametrize(
    "params, words",
    [
        ({"foreground": [[500, 10, 10]], "background": [], "label": "liver"}, ["outside the image", "[64, 64, 30]"]),
        ({"foreground": [[10, 10, -1]], "background": []}, ["outside the image"]),
        ({"foreground": [], "background": [], "label": "liver"}, ["no points"]),
        ({"label": "liver"}, ["no points"]),
        ({"foreground": [POSITIVE], "background": [], "label": "kidney"}, ["kidney", "subclasses"]),
        ({"foreground": [POSITIVE], "background": [], "label": "Bone"}, ["bone", "subclasses"]),
        ({"foreground": [[1, 2]], "background": []}, ["3 coordinates"]),
        ({"foreground": "here", "background": []}, ["voxel indices"]),
    ],
)
def test_bad_clicks_are_4xx(server, params, words):
    start = time.perf_counter()
    r = post(server, "vista3d_point", {**SLICER, **params})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert all(w.lower() in detail.lower() for w in words), detail
    assert time.perf_counter() - start < 30  # refused before any encoder pass


def test_bad_class_prompts_are_4xx(server):
    for params, words in [
        ({"label_prompt": ["no such organ"]}, ["no such organ"]),
        ({"label_prompt": [16]}, ["16", "points"]),
        ({"label_prompt": [999]}, ["999"]),
        ({"foreground": [POSITIVE]}, ["vista3d_point"]),
    ]:
        r = post(server, "vista3d", params)
        assert r.status_code == 422, r.text
        assert all(w in r.json()["detail"] for w in words), r.text



def test_finetuning_learns_a_new_structure(server, root):
    client = slicer_client_class()(server.url, tmpdir=str(root))
    segmentation = nib.load(str(CT.parent / "example_ct_sm_totalseg_v2.nii.gz"))
    values = np.asarray(segmentation.dataobj)[CROP]
    label = np.zeros(values.shape, np.uint8)
    label[values == LIVER_V2] = 1
    label[values == KIDNEY_RIGHT_V2] = 2  # taught under a name VISTA3D does not know
    assert (label == 1).sum() > 1000 and (label == 2).sum() > 500
    label_file = root / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, nib.load(str(server.studies / "crop.nii.gz")).affine), str(label_file))
    client.save_label("crop", str(label_file), params={"label_info": [{"name": "liver", "idx": 1}, {"name": NEW_NAME, "idx": 2}]})

    start = time.time()
    client.train_start(
        "vista3d", {"max_epochs": 2, "patch_size": 48, "val_split": 0.0, "label_mapping": [[1, 1], [2, 133]]}
    )
    status = wait_for_training(client)
    print(f"\nvista3d finetuning, 2 iterations of 48^3: {time.time() - start:.0f} s")
    assert status["status"] == "DONE", status

    info = client.info()
    for model in ("vista3d", "vista3d_point"):
        assert info["models"][model]["labels"][NEW_NAME] == 133, info["models"][model]["labels"]
        assert "trained here" in info["models"][model]["weights"]["default"]["message"]
    classes = json.loads((server.model_dir / "vista3d_classes.json").read_text())
    assert classes == {NEW_NAME: 133}

    # segmented by name at once, with the new weights (the encoder runs again; the old embeddings are gone)
    seg, answer = infer(server, "vista3d", {"label_prompt": NEW_NAME, **SLICER})
    assert answer["label_names"] == {NEW_NAME: 133} and set(np.unique(seg)) <= {0, 133}
    assert answer["vista3d_cache"]["request"]["encoder_runs"] == 1


def test_without_weights_vista3d_says_where_they_go_and_the_rest_works(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    write_crop(CT, studies / "crop.nii.gz")
    conf = {"models": "spleen,vista3d", "weights_url": f"http://127.0.0.1:{free_port()}/"}
    server = Server(studies, tmp_path / "model", conf, tmp_path / "server.log")
    try:
        expected = str(tmp_path / "model" / "vista3d" / "models" / "model.pt")
        models = server.info()["models"]
        for name in ("vista3d", "vista3d_point"):
            assert models[name]["untrained"] is True and expected in models[name]["message"]
        for name, params in [("vista3d", {}), ("vista3d_point", {"foreground": [POSITIVE], "background": []})]:
            r = post(server, name, params)
            assert r.status_code == 503, r.text
            assert expected in r.json()["detail"]
        assert post(server, "spleen", {}).status_code == 200
    finally:
        server.stop()
