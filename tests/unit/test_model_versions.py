"""Model versions of one served checkpoint: numbered, served newest first, pinned, refused when broken, bounded."""

from __future__ import annotations

import os

import pytest
import torch

from lib.versions.store import VersionError, VersionStore
from lib.weights.checkpoints import load_state_dict


def _network():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def _check(path):
    _network().load_state_dict(load_state_dict(path), strict=True)


def _publish(store, value: float, studies=("a",)) -> int:
    number = store.begin("wholebody", list(studies))
    state = {k: torch.full_like(v, value) for k, v in _network().state_dict().items()}
    store.publish(number, lambda f: torch.save(state, f), {"val_mean_dice": value})
    return number


def _served_value(store) -> float:
    return float(load_state_dict(store.served_path)["bias"][0])


def test_versions_pin_unpin_and_restart(tmp_path):
    store = VersionStore(str(tmp_path / "wholebody_lowres.pt"))
    assert (_publish(store, 1.0), _publish(store, 2.0, ("a", "b"))) == (1, 2)
    assert store.state() == {"serving": 2, "pinned": None} and _served_value(store) == 2.0
    second = store.versions()[1]
    assert (second["parent"], second["studies"], second["metrics"], second["trainer"]) == (1, ["a", "b"], {"val_mean_dice": 2.0}, "wholebody")

    store.pin(1, _check)
    assert _served_value(store) == 1.0
    assert _publish(store, 3.0) == 3 and _served_value(store) == 1.0, "a pinned version stays served while training publishes"
    restarted = VersionStore(store.served_path)
    assert restarted.state() == {"serving": 1, "pinned": 1}
    restarted.unpin(_check)
    assert restarted.state() == {"serving": 3, "pinned": None} and _served_value(restarted) == 3.0


def test_broken_versions_are_refused_and_the_served_one_stays(tmp_path):
    store = VersionStore(str(tmp_path / "spleen.pt"))
    _publish(store, 1.0)
    _publish(store, 2.0)
    with open(store.weights(1), "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(VersionError, match="version 1 of spleen cannot be loaded"):
        store.pin(1, _check)
    os.remove(store.weights(2))
    with pytest.raises(VersionError, match="no weights file"):
        store.pin(2, _check)
    with pytest.raises(VersionError, match="has no version 7"):
        store.pin(7, _check)
    assert store.state()["serving"] == 2 and _served_value(store) == 2.0


def test_old_versions_are_deleted_beyond_the_bound(tmp_path):
    store = VersionStore(str(tmp_path / "spleen.pt"), keep=2)
    _publish(store, 1.0)
    store.pin(1, _check)
    for value in (2.0, 3.0, 4.0):
        _publish(store, value)
    assert [v["version"] for v in store.versions()] == [1, 4], "the pinned version is kept, the newest too"
    with pytest.raises(VersionError, match="being served"):
        store.delete(1)
    store.delete(4)
    assert [v["version"] for v in store.versions()] == [1]
