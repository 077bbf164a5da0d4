"""Training request parameters: every trainer declares its own with types; what a client may send is
converted or refused naming the parameter, before any training process starts."""

from __future__ import annotations

import json

import pytest

from lib.conf import ConfError
from lib.configs import CONFIGS

OFFLINE = {"download_weights": "false"}


@pytest.fixture(scope="module")
def trainers(tmp_path_factory) -> dict:
    found = {}
    for name in ("wholebody", "spleen", "vista3d"):
        config = CONFIGS[name]()
        config.init(name, str(tmp_path_factory.mktemp(name)), OFFLINE, None)
        tasks = config.trainer()
        found.update(tasks if isinstance(tasks, dict) else {name: tasks})
    assert set(found) == {"wholebody", "wholebody_structures", "spleen", "vista3d"}
    return found


def slicer_params(config: dict) -> dict:
    """What the Slicer module sends for a trainer's options left as shown (MONAILabel.py getParamsFromConfig)."""
    return {k: v[0] if isinstance(v, list) else v for k, v in config.items()}


def refused(trainer, params: dict) -> str:
    with pytest.raises(ConfError) as e:
        trainer.checked_params(params)
    return str(e.value)


@pytest.mark.parametrize("name", ["wholebody", "wholebody_structures", "spleen", "vista3d"])
def test_every_option_shown_is_declared_and_accepted_as_clients_send_it(trainers, name):
    trainer = trainers[name]
    assert set(trainer.config()) <= set(trainer.request_params)
    sent = slicer_params(trainer.config())
    checked = trainer.checked_params(sent)
    assert checked["max_epochs"] == trainer.config()["max_epochs"] and checked["dataset"] == "Dataset"
    # The lists Slicer shows, sent back as they are (REST clients that echo /info/) pick their first entry.
    assert trainer.checked_params(trainer.config())["tracking"] == "None"
    # The process gets the checked values as JSON and checks them again: the same values.
    sent_on = json.loads(json.dumps(checked))
    assert json.loads(json.dumps(trainer.checked_params(sent_on))) == sent_on


@pytest.mark.parametrize("name", ["wholebody", "wholebody_structures", "spleen", "vista3d"])
def test_safe_conversions(trainers, name):
    checked = trainers[name].checked_params(
        {"max_epochs": "1", "val_split": "0", "pretrained": "false", "train_batch_size": "1", "dataset": ["CacheDataset", "Dataset"], "gpus": 0}
    )
    assert checked == {"max_epochs": 1, "val_split": 0.0, "pretrained": False, "train_batch_size": 1, "dataset": "CacheDataset", "gpus": "0"}
    assert type(checked["max_epochs"]) is int and type(checked["val_split"]) is float


@pytest.mark.parametrize("name", ["wholebody", "wholebody_structures", "spleen", "vista3d"])
@pytest.mark.parametrize(
    "params, words",
    [
        ({"max_epochs": "one"}, ["'max_epochs'", "integer"]),
        ({"max_epochs": 1.5}, ["'max_epochs'", "integer"]),
        ({"max_epochs": True}, ["'max_epochs'", "integer"]),
        ({"max_epochs": 0}, ["'max_epochs'", ">= 1"]),
        ({"val_split": "some"}, ["'val_split'", "number"]),
        ({"val_split": 0.95}, ["'val_split'", "[0.0, 0.9]"]),
        ({"pretrained": "perhaps"}, ["'pretrained'", "true or false"]),
        ({"val_batch_size": 2}, ["'val_batch_size'", "<= 1"]),
        ({"dataset": "SmartCacheDataset"}, ["'dataset'", "Dataset, CacheDataset, PersistentDataset"]),
        ({"dataloader": "MyLoader"}, ["'dataloader'"]),
        ({"name": "../../elsewhere"}, ["'name'", "plain name"]),
        ({"gpus": "0; rm -rf /"}, ["'gpus'"]),
        ({"device": "tpu"}, ["'device'"]),
        ({"tracking_uri": "file:///etc"}, ["'tracking_uri'", "http(s)"]),
        ({"max_epoch": 1}, ["unknown training parameter", "max_epoch", "max_epochs"]),
        ({"train_ds": "/etc/datalist.json"}, ["unknown training parameter", "train_ds"]),
        ({"bundle_path": "/tmp/evil"}, ["unknown training parameter", "bundle_path"]),
    ],
)
def test_refused_naming_the_parameter(trainers, name, params, words):
    message = refused(trainers[name], params)
    assert all(w in message for w in words), message


@pytest.mark.parametrize(
    "name, params, words",
    [
        ("wholebody", {"highres": "maybe"}, ["'highres'", "true or false"]),
        ("wholebody", {"learning_rate": 0.1}, ["unknown training parameter", "learning_rate"]),
        ("wholebody_structures", {"structures": 5}, ["'structures'", "list of names"]),
        ("wholebody_structures", {"head": ["a"]}, ["'head'", "text"]),
        ("wholebody_structures", {"learning_rate": "fast"}, ["'learning_rate'", "number"]),
        ("spleen", {"highres": True}, ["unknown training parameter", "highres"]),
        ("vista3d", {"patch_size": 50}, ["'patch_size'", "multiples of 16"]),
        ("vista3d", {"patch_size": "big"}, ["'patch_size'", "integer"]),
        ("vista3d", {"label_mapping": [[1, 999]]}, ["label_mapping", "global id"]),
        ("vista3d", {"drop_label_prob": 2}, ["'drop_label_prob'", "[0.0, 1.0]"]),
        ("vista3d", {"max_point": 0}, ["'max_point'", ">= 1"]),
        ("vista3d", {"train_batch_size": 2}, ["'train_batch_size'", "<= 1"]),
    ],
)
def test_each_trainer_checks_its_own(trainers, name, params, words):
    message = refused(trainers[name], params)
    assert all(w in message for w in words), message


def test_trainer_specific_conversions(trainers):
    assert trainers["wholebody"].checked_params({"highres": "false"}) == {"highres": False}
    structures = trainers["wholebody_structures"].checked_params({"structures": "lesion, node ,", "learning_rate": "1e-3"})
    assert structures == {"structures": ["lesion", "node"], "learning_rate": 0.001}
    vista = trainers["vista3d"].checked_params({"patch_size": "48", "label_mapping": "[[1, 1], [2, 133]]", "max_point": "3"})
    assert vista == {"patch_size": (48, 48, 48), "label_mapping": [(1, 1), (2, 133)], "max_point": 3}
