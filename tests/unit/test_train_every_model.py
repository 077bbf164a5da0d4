"""``POST /train/`` (OHIF's "Update Model", every trainer one after the other): a trainer with nothing to learn
(the decoder heads, until a saved label names a new structure) is left out and says why; the others start; only a
request where every trainer has nothing to learn is refused (422)."""

from __future__ import annotations

import pytest
from monailabel.endpoints import train

from lib.conf import ConfError, NothingToTrainError
from lib.server import train_requests


class Trainer:
    def __init__(self, refusal: Exception | None = None):
        self.refusal = refusal

    def plan(self, params, datastore):
        if self.refusal:
            raise self.refusal


class App:
    def __init__(self, **trainers):
        self._trainers = trainers

    def datastore(self):
        return None


@pytest.fixture
def started(monkeypatch):
    """The training processes MONAI Label would start: (model, params)."""
    runs = []
    monkeypatch.setattr(train, "run_model", lambda model, params, run_sync, enqueue: runs.append((model, params)) or {"id": model})
    monkeypatch.setattr(train, "run", train.run)
    return runs


def test_a_trainer_with_nothing_to_learn_is_left_out(started):
    train_requests.install(App(wholebody=Trainer(), wholebody_structures=Trainer(NothingToTrainError("no new structure to learn"))))
    answer = train.run({})
    assert started == [("wholebody", {})]
    assert answer["wholebody"]["result"] == {"id": "wholebody"}
    assert answer["wholebody_structures"] == {"result": None, "detail": "not trained: no new structure to learn"}


def test_every_trainer_with_nothing_to_learn_is_a_refusal(started):
    train_requests.install(App(wholebody_structures=Trainer(NothingToTrainError("no new structure to learn"))))
    with pytest.raises(NothingToTrainError, match="no new structure"):
        train.run({})
    assert started == []


def test_any_other_refusal_refuses_the_whole_request(started):
    train_requests.install(App(wholebody=Trainer(), spleen=Trainer(ConfError("'max_epochs' must be an integer"))))
    with pytest.raises(ConfError, match="max_epochs"):
        train.run({})
    assert started == []
