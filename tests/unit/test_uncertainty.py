"""Active learning in-process: MC dropout scores, the ``uncertainty`` strategy, hand-outs.

The built case, where the answer is known: after intensity normalisation, phantom voxels fall in
clusters (air and lung below, fat, soft tissue and bone above) with an empty gap between lung and
fat. A "model" of two hypotheses that both fit every phantom voxel, "body starts at threshold
low" and "... at high" (both inside the gap), is sampled by dropout over the two. The hypotheses
agree wherever the training data had examples and disagree only on voxels inside the gap: that is
epistemic uncertainty by definition. So the phantoms score about 0, the real CT (partial volume
puts some voxels between lung and fat) more, and a volume of uniform noise the most.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from conftest import CT
from lib.activelearning import datastore_info
from lib.activelearning.handout import Exclusive, Handouts
from lib.activelearning.mc_dropout import enable_mc_dropout, mc_dropout_uncertainty, pick_windows
from lib.activelearning.scoring import SCORE_KEY, WholeBodyUncertainty
from lib.activelearning.strategies import Uncertainty
from lib.datastore.local import CheckedLocalDatastore
from lib.networks import wholebody_segresnet
from lib.phantom import make_phantom, ras_affine
from lib.weights.checkpoints import save_atomically

# The phantom's reference field of view at 10 mm: the scorer's resampling is the identity.
SHAPE, SPACING = (36, 30, 24), (10.0, 10.0, 10.0)
PHANTOMS = ["phantom_a", "phantom_b", "phantom_c"]
RANKING = ["noise", "ct", *PHANTOMS]  # most uncertain first (phantoms: any order)


class GapHypotheses(torch.nn.Module):
    """Two classes (outside, body) by two thresholds on the normalised intensity, one dropped at random.

    (B, 1, X, Y, Z) -> (B, 2, X, Y, Z) logits. Each pass keeps each hypothesis with probability 1/2
    (both when dropout drops both) and averages the kept ones' logits ``gain * (x - threshold)``.
    """

    def __init__(self, low: float = 0.0, high: float = 0.0, gain: float = 20.0):
        super().__init__()
        self.register_buffer("thresholds", torch.tensor([low, high]))
        self.gain = gain
        self.dropout = torch.nn.Dropout3d(0.5)

    def forward(self, x):
        votes = self.gain * (x - self.thresholds.view(1, 2, 1, 1, 1))
        keep = (self.dropout(torch.ones(x.shape[0], 2, 1, 1, 1, device=x.device)) > 0).float()
        keep = torch.where(keep.sum(1, keepdim=True) > 0, keep, torch.ones_like(keep))
        body = (votes * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True)
        return torch.cat([-body / 2, body / 2], dim=1)


def write(path: Path, image: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(image.astype(np.int16), ras_affine(SHAPE, SPACING)), str(path))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The checkpoint: both thresholds inside the gap (normalised -0.5 and -0.3: about -580 and -400 HU
    for a phantom's range). The factory's own thresholds (0, 0) would be wrong: the file must be loaded."""
    path = tmp_path_factory.mktemp("model") / "wholebody_lowres.pt"
    save_atomically(GapHypotheses(-0.5, -0.3).state_dict(), str(path))
    return path


def studies(root: Path) -> Path:
    """Three phantoms of varied anatomy, the shared real CT and a volume of noise, as a datastore folder."""
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(PHANTOMS):
        write(root / f"{name}.nii.gz", make_phantom(SHAPE, SPACING, seed=i, variation=0.5).image)
    write(root / "noise.nii.gz", np.random.default_rng(0).uniform(-1000, 1000, SHAPE))
    shutil.copy(CT, root / "ct.nii.gz")
    return root


def datastore(root: Path) -> CheckedLocalDatastore:
    return CheckedLocalDatastore(str(root), extensions=("*.nii.gz",), auto_reload=False)


def scorer(checkpoint: Path, **kwargs) -> WholeBodyUncertainty:
    return WholeBodyUncertainty(
        network_factory=GapHypotheses,
        checkpoint_paths=[str(checkpoint.parent / "official_missing.pt"), str(checkpoint)],
        labels={"body": 1},
        pixdim=SPACING,
        roi_size=(16, 16, 16),
        **{"mc_samples": 4, "windows": 2, **kwargs},
    )


@pytest.fixture
def scored(tmp_path, trained):
    """A datastore whose five studies the scorer has scored."""
    store = datastore(studies(tmp_path / "studies"))
    summary = scorer(trained)({}, store)
    assert sorted(summary["scored"]) == sorted(RANKING) and not summary["failed"], summary
    return store


def score(store, image_id: str) -> float:
    return store.get_image_info(image_id)[SCORE_KEY]["score"]


def uncertainty(handouts: Handouts | None = None) -> Exclusive:
    return Exclusive(Uncertainty(SCORE_KEY), handouts or Handouts(30))


def test_the_model_is_least_certain_on_noise_and_the_strategy_hands_it_out(scored, trained):
    scores = {i: score(scored, i) for i in RANKING}
    assert scores["noise"] > 5 * scores["ct"] > 5 * max(scores[p] for p in PHANTOMS), scores
    record = scored.get_image_info("noise")[SCORE_KEY]
    assert record["model"] == "wholebody_lowres.pt" and record["model_mtime"] == os.stat(trained).st_mtime
    assert record["mc_samples"] == 4 and record["windows"] == 2 and record["voxels"] > 0
    assert record["entropy"] >= record["score"] > 0

    answer = uncertainty()({"strategy": "uncertainty", "client_id": "a"}, scored)
    assert answer["id"] == "noise" and answer["selected_by"] == "uncertainty"
    assert answer["score"] == scores["noise"] and answer["ranked"] == 5 and answer["unscored"] == 0


def test_scores_again_only_for_a_new_model_or_a_new_study(scored, trained, tmp_path):
    method = scorer(trained)
    assert method.pending(scored) == []
    assert method({}, scored)["scored"] == {}

    shutil.copy(tmp_path / "studies" / "phantom_a.nii.gz", tmp_path / "studies" / "new.nii.gz")
    scored.refresh()
    assert method.pending(scored) == ["new"]
    assert list(method({}, scored)["scored"]) == ["new"]

    mtime = os.stat(trained).st_mtime
    try:
        os.utime(trained, (mtime + 10, mtime + 10))  # a training run published a new model
        assert method.pending(scored) == sorted(RANKING + ["new"])
        assert list(method({"max_studies": 2}, scored)["scored"]) == ["ct", "new"]
        assert method.pending(scored) == ["noise", *PHANTOMS]
    finally:
        os.utime(trained, (mtime, mtime))


def test_a_study_that_cannot_be_read_is_reported_and_not_retried_until_the_model_changes(tmp_path, trained):
    root = studies(tmp_path / "studies")
    (root / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    store = datastore(root)
    method = scorer(trained)
    summary = method({}, store)
    assert list(summary["failed"]) == ["broken"] and len(summary["scored"]) == len(RANKING)
    assert "error" in store.get_image_info("broken")[SCORE_KEY]
    assert method.pending(store) == []
    assert uncertainty()({"strategy": "uncertainty"}, store)["id"] == "noise"


def test_another_client_gets_another_study_until_release_or_expiry(scored):
    now = [1000.0]
    handouts = Handouts(minutes=30, clock=lambda: now[0])
    strategy = uncertainty(handouts)

    def ask(client: str) -> str:
        return strategy({"strategy": "uncertainty", "client_id": client}, scored)["id"]

    assert ask("a") == "noise"
    assert ask("b") == "ct", "the study handed out to 'a' went to 'b' too"
    assert ask("a") == "noise", "a client may be given its own study again"
    assert set(handouts.snapshot()) == {"noise", "ct"}

    handouts.release("noise")  # a label was saved for it
    assert ask("b") == "noise" and "ct" not in handouts.snapshot(), "one study per client"

    assert ask("a") == "ct"
    now[0] += 30 * 60  # 'b' went away without saving a label
    assert ask("a") == "noise"


def test_hand_outs_survive_a_restart(scored, tmp_path):
    path = tmp_path / "model" / "handouts.json"
    now = [1000.0]
    before = Handouts(minutes=30, clock=lambda: now[0], path=str(path))
    assert uncertainty(before)({"strategy": "uncertainty", "client_id": "a"}, scored)["id"] == "noise"

    after = Handouts(minutes=30, clock=lambda: now[0], path=str(path))  # the server started again
    assert after.snapshot()["noise"]["client_id"] == "a"
    assert uncertainty(after)({"strategy": "uncertainty", "client_id": "b"}, scored)["id"] == "ct"
    now[0] += 30 * 60
    assert Handouts(minutes=30, clock=lambda: now[0], path=str(path)).snapshot() == {}, "expired while down"

    path.write_text("{not json")
    assert Handouts(minutes=30, path=str(path)).snapshot() == {}


def test_random_and_first_never_hand_out_a_held_study(scored):
    handouts = Handouts(30)
    first = Exclusive(First(), handouts)
    assert first({"strategy": "first", "client_id": "a"}, scored)["id"] == "ct"
    assert first({"strategy": "first", "client_id": "b"}, scored)["id"] == "noise"
    assert first({"strategy": "first", "client_id": "c"}, scored)["id"] == "phantom_a"
    random = Exclusive(Random(), handouts)
    picks = {random({"strategy": "random", "client_id": "d"}, scored)["id"] for _ in range(30)}
    assert picks <= {"phantom_b", "phantom_c"}, picks
    assert random({"strategy": "random", "client_id": "e"}, scored)["id"] in {"phantom_b", "phantom_c"}
    assert first({"strategy": "first", "client_id": "f"}, scored) is None, "all five are held by others"


def test_uncertainty_says_when_it_falls_back_to_random(tmp_path):
    store = datastore(studies(tmp_path / "studies"))
    answer = uncertainty()({"strategy": "uncertainty"}, store)
    assert answer["id"] in RANKING
    assert answer["selected_by"] == "random" and "no unlabeled study has a" in answer["note"]


def test_scores_of_one_model_are_compared_the_one_that_scored_most(tmp_path):
    store = datastore(studies(tmp_path / "studies"))
    old, new = {"model": "wholebody_lowres.pt", "model_mtime": 1.0}, {"model": "wholebody_lowres.pt", "model_mtime": 2.0}
    store.update_image_info("phantom_a", {SCORE_KEY: {"score": 9.0, **old}})
    store.update_image_info("phantom_b", {SCORE_KEY: {"score": 0.2, **old}})
    store.update_image_info("phantom_c", {SCORE_KEY: {"score": 0.1, **new}})  # re-scoring after training began
    answer = uncertainty()({"strategy": "uncertainty"}, store)
    assert answer["id"] == "phantom_a" and answer["ranked"] == 2 and answer["unscored"] == 2

    store.update_image_info("phantom_b", {SCORE_KEY: {"score": 0.05, **new}})  # the new model has scored as many
    answer = uncertainty()({"strategy": "uncertainty"}, store)
    assert answer["id"] == "phantom_c" and answer["ranked"] == 2


def test_a_score_from_another_process_keeps_the_servers_label_and_shows_there(tmp_path):
    root = studies(tmp_path / "studies")
    server, task = datastore(root), datastore(root)  # two processes' views of one datastore file
    label = tmp_path / "label.nii.gz"
    write(label, np.zeros(SHAPE, np.int16))
    server.save_label("phantom_a", str(label), "final", {"label_names": {"liver": 5}})

    assert datastore_info.update_image_info(task, "phantom_b", {SCORE_KEY: {"score": 0.5}})
    assert not datastore_info.update_image_info(task, "gone", {SCORE_KEY: {"score": 0.5}})
    fresh = datastore(root)
    assert fresh.get_label_info("phantom_a", "final")["label_names"] == {"liver": 5}, "the score clobbered the label"
    datastore_info.reload(server)
    assert server.get_image_info("phantom_b")[SCORE_KEY]["score"] == 0.5
    assert "phantom_a" not in server.get_unlabeled_images()


def test_cost_is_bounded_by_samples_and_windows_not_by_volume_size():
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = GapHypotheses()

        def forward(self, x):
            calls.append(tuple(x.shape[2:]))
            return self.net(x)

    network = enable_mc_dropout(Counting())
    image = torch.zeros(1, 80, 70, 60)
    hu = torch.full((1, 80, 70, 60), -1000.0)
    hu[:, 30:50, 20:50, 10:40] = 40.0  # the body, off-centre
    u = mc_dropout_uncertainty(network, image, hu, (32, 32, 32), samples=3, windows=2)
    assert calls == [(32, 32, 32)] * 6 and u.windows == 2
    assert u.voxels == 20 * 30 * (22 + 12)  # the body voxels of windows z 0..31 and 28..59

    # The chosen window is the one holding most of the body; a small volume is padded to one window.
    tiles = pick_windows(hu[0] > -500, (32, 32, 32), 1)
    assert tiles == [(slice(24, 56), slice(19, 51), slice(0, 32))]  # grid 0/24/48, 0/19/38, 0/28
    calls.clear()
    mc_dropout_uncertainty(network, image[:, :10, :10, :10], hu[:, :10, :10, :10], (32, 32, 32), samples=2)
    assert calls == [(32, 32, 32)] * 2


def test_the_wholebody_network_samples_its_dropout_and_nothing_else():
    network = enable_mc_dropout(wholebody_segresnet())
    sampling = [m for m in network.modules() if m.training]
    assert len(sampling) == 1 and isinstance(sampling[0], torch.nn.Dropout3d) and sampling[0].p == 0.2
    with pytest.raises(ValueError, match="no dropout"):
        enable_mc_dropout(torch.nn.Conv3d(1, 2, 1))


class FakeApp:
    """What ``trigger.async_scoring`` uses of the app."""

    def __init__(self, store, method, server_mode: bool):
        self._server_mode = server_mode
        self._scoring_methods = {SCORE_KEY: method}
        self._store = store

    def datastore(self):
        return self._store


def test_scoring_starts_only_when_a_study_needs_a_score_and_never_queues_twice(scored, trained, tmp_path, monkeypatch):
    from lib.activelearning import trigger

    started = []

    def run(kind, request=None, **kwargs):
        started.append(request)
        task = {"status": "SUBMITTED", "request": request}
        monkeypatch.setattr(trigger, "tasks", lambda method: [task])
        return task, None

    monkeypatch.setattr(trigger.AsyncTask, "run", run)
    app = FakeApp(scored, scorer(trained), server_mode=True)
    assert trigger.async_scoring(app, None) == {SCORE_KEY: None} and started == [], "every study has a current score"

    shutil.copy(tmp_path / "studies" / "phantom_a.nii.gz", tmp_path / "studies" / "new.nii.gz")
    scored.refresh()
    assert trigger.async_scoring(app, SCORE_KEY)["request"]["method"] == SCORE_KEY
    assert trigger.async_scoring(app, SCORE_KEY) is None and len(started) == 1, "a run already waits"

    posted = []

    class Answer:
        def raise_for_status(self):
            pass

        def json(self):
            return {SCORE_KEY: {"result": "queued"}}

    monkeypatch.setattr(trigger.requests, "post", lambda url, json, timeout: posted.append((url, json)) or Answer())
    task_process = FakeApp(scored, scorer(trained), server_mode=False)  # e.g. the training process
    assert trigger.async_scoring(task_process, None) == {SCORE_KEY: {"result": "queued"}}
    assert posted[0][0].endswith("/scoring/") and posted[0][1] == {SCORE_KEY: {}}, "queued, not refused with 429"


def test_the_config_serves_the_score_and_the_strategy_and_checks_its_options(tmp_path):
    from lib.conf import ConfError
    from lib.configs.wholebody import WholeBodySegmentation

    config = WholeBodySegmentation()
    conf = {"download_weights": "false", "al_mc_samples": "3", "al_roi": "48", "al_gumbel_scale": "0.5", "al_diversity_studies": "2"}
    config.init("wholebody", str(tmp_path), conf, None)
    method = config.scoring_method()[SCORE_KEY]
    assert (method.mc_samples, method.roi_size, method.pixdim) == (3, (48, 48, 48), (3.0, 3.0, 3.0))
    assert method.checkpoint_paths[-1] == str(tmp_path / "wholebody_lowres.pt"), "a model trained here wins"
    assert method.names[5] == "liver" and len(method.names) == 104 and method.has_encoder
    strategies = config.strategy()
    assert list(strategies) == ["diversity_then_class_entropy", "diversity", "class_entropy", "uncertainty"]
    assert isinstance(strategies["uncertainty"], Uncertainty)
    combined = strategies["diversity_then_class_entropy"]
    assert combined.studies == 2 and combined.class_entropy is strategies["class_entropy"]
    assert strategies["class_entropy"].noise_scale == 0.5 and strategies["class_entropy"].channels["liver"] == 5
    for bad in ({"al_roi": "50"}, {"al_mc_samples": "1"}, {"al_windows": "many"}, {"al_gumbel_scale": "-1"}, {"al_diversity_studies": "-1"}):
        with pytest.raises(ConfError, match=next(iter(bad))):
            WholeBodySegmentation().init("wholebody", str(tmp_path), {"download_weights": "false", **bad}, None)
