"""``POST /batch/infer``: requests checked before any study is read; the task runs every study, and a
study that fails is answered with its reason while the others are labelled."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.batch.server_request import checked_params
from lib.batch.server_task import StudyBatchInfer
from lib.conf import ConfError
from lib.server.errors import NotFoundError
from lib.transforms.validate import InvalidImageError


def task(kind, **config):
    return SimpleNamespace(type=kind, config=lambda: {"device": ["cpu"], "result_dtype": "uint8", **config})


INFERS = {
    "wholebody": task(InferType.SEGMENTATION, highres=True, sw_overlap=0.25, heads=True, head_overlap=["new", "existing"]),
    "vista3d": task(InferType.SEGMENTATION, label_prompt="everything"),
    "vista3d_point": task(InferType.DEEPGROW),
}


def test_params_come_back_with_their_types():
    params = checked_params(
        INFERS,
        "wholebody",
        {"multi_gpu": "false", "max_workers": "2", "label_tag": "batch_1", "highres": "no", "sw_overlap": "0.5", "device": "cuda:1", "gpus": "0,1"},
    )
    assert params["multi_gpu"] is False and params["max_workers"] == 2 and params["highres"] is False
    assert params["sw_overlap"] == 0.5 and params["label_tag"] == "batch_1" and params["device"] == "cuda:1"
    assert checked_params(INFERS, "vista3d", {"label_prompt": [1, "liver"]})["label_prompt"] == [1, "liver"]


@pytest.mark.parametrize(
    "model, params, error, words",
    [
        ("nope", {}, NotFoundError, "unknown model 'nope'; batch inference runs: vista3d, wholebody"),
        ("vista3d_point", {}, ConfError, "needs clicks"),
        ("wholebody", {"max_workers": "two"}, ConfError, "'max_workers' must be an integer"),
        ("wholebody", {"max_batch_size": -1}, ConfError, "'max_batch_size' must be >= 0"),
        ("wholebody", {"multi_gpu": "sometimes"}, ConfError, "'multi_gpu' must be true or false"),
        ("wholebody", {"device": "tpu"}, ConfError, "'device' must be"),
        ("wholebody", {"gpus": "first"}, ConfError, "'gpus' must be"),
        ("wholebody", {"logging": "LOUD"}, ConfError, "'logging' must be one of"),
        ("wholebody", {"highres": "maybe"}, ConfError, "'highres' must be true or false"),
        ("wholebody", {"sw_overlap": "half"}, ConfError, "'sw_overlap' must be a number"),
    ],
)
def test_bad_requests_are_refused_naming_the_problem(model, params, error, words):
    with pytest.raises(error, match=words):
        checked_params(INFERS, model, params)


def test_label_tag_with_path_tricks_is_a_400():
    with pytest.raises(HTTPException) as refused:
        checked_params(INFERS, "wholebody", {"label_tag": "../final"})
    assert refused.value.status_code == 400 and "label tag" in refused.value.detail


class Datastore:
    def list_images(self):
        return ["b_corrupt", "a", "c"]


def test_every_study_runs_and_a_failure_is_answered_with_its_reason():
    seen = []

    def infer(request, datastore):
        seen.append((request["image"], request["device"], request["label_tag"], request["save_label"]))
        if request["image"] == "b_corrupt":
            raise InvalidImageError("image must be a 3D volume, got shape (512, 512)")
        return {"label": request["image"], "tag": request["label_tag"], "params": {}}

    request = {"model": "wholebody", "images": "all", "label_tag": "batch", "multi_gpu": True, "device": "cuda", "save_label": False}
    results = StudyBatchInfer()(request, Datastore(), infer)

    # No GPU here: multi_gpu falls back to the device (stock MONAI Label divides by zero); saving is the point.
    assert seen == [("a", "cpu", "batch", True), ("b_corrupt", "cpu", "batch", True), ("c", "cpu", "batch", True)]
    assert results["a"]["label"] == "a" and results["c"]["label"] == "c"
    assert results["b_corrupt"] == {"error": "InvalidImageError: image must be a 3D volume, got shape (512, 512)"}


def test_max_batch_size_limits_the_studies():
    results = StudyBatchInfer()({"model": "m", "max_batch_size": 2, "multi_gpu": False, "device": "cpu"}, Datastore(), lambda r, d: {"label": r["image"]})
    assert list(results) == ["a", "b_corrupt"]
