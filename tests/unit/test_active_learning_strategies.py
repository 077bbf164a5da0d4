"""Per-structure scores, encoder features and the ``diversity`` / ``class_entropy`` strategies,
on built inputs whose answers are known."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import SegResNet

from lib.activelearning.handout import Exclusive, Handouts
from lib.activelearning.labelled_voxels import LabelledVoxels, channel_table
from lib.activelearning.mc_dropout import enable_mc_dropout, mc_dropout_features, mc_dropout_uncertainty
from lib.activelearning.random_strategy import Random, handed_out_at
from lib.activelearning.records import decode_features, encode_features, structures_record
from lib.activelearning.scoring import SCORE_KEY, WholeBodyUncertainty
from lib.activelearning.selection import (
    MIN_PREDICTED_VOXELS,
    class_entropy_pick,
    coverage_pick,
    fewest_labelled_structure,
    gumbel_scale,
    noisy_pick,
)
from lib.activelearning.strategies import ClassEntropy, Diversity, DiversityThenClassEntropy, Uncertainty
from lib.activelearning.stratified_random import GROUP_KEY, StratifiedRandom, header_group
from lib.datastore.image_check import read_header
from lib.datastore.local import CheckedLocalDatastore
from lib.phantom import make_phantom, ras_affine
from lib.weights.checkpoints import save_atomically


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks gain nothing from a second thread and lose much to the machine's other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the per-structure score ---

# Two tissues: each voxel's intensity (1 or 2) selects its class probabilities (background, a, b).
TISSUES = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.4, 0.0, 0.6]])


def entropy(p) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


class TissueProbabilities(torch.nn.Module):
    """(B, 1, X, Y, Z) intensities 1 or 2 -> logits whose softmax is that tissue's row of TISSUES."""

    def forward(self, x):
        p = TISSUES.to(x.device)[x[:, 0].round().long()].clamp_min(1e-30)  # (B, X, Y, Z, 3)
        return torch.log(p).permute(0, 4, 1, 2, 3)


def test_per_structure_score_is_the_probability_weighted_entropy_over_the_predicted_volume():
    image = torch.ones(1, 10, 8, 6)
    image[:, :, :, 4:] = 2.0  # tissue b: 10 x 8 x 2 voxels, tissue a: 10 x 8 x 4
    hu = torch.full_like(image, 40.0)
    # The window is larger than the volume: its padding (replicated tissue b) must not count.
    u = mc_dropout_uncertainty(TissueProbabilities(), image, hu, (16, 8, 8), samples=2)

    h_a, h_b = entropy(TISSUES[1].tolist()), entropy(TISSUES[2].tolist())
    assert u.structure_entropy[1].item() == pytest.approx(h_a, rel=1e-5)
    assert u.structure_entropy[2].item() == pytest.approx(h_b, rel=1e-5)
    n_a, n_b = 10 * 8 * 4, 10 * 8 * 2
    background = (h_a * 0.2 * n_a + h_b * 0.4 * n_b) / (0.2 * n_a + 0.4 * n_b)
    assert u.structure_entropy[0].item() == pytest.approx(background, rel=1e-5)
    assert u.structure_voxels.tolist() == [0, n_a, n_b]
    assert u.bald == pytest.approx(0.0, abs=1e-6) and u.features is None  # identical passes; no encoder

    names = {1: "tissue_a", 2: "tissue_b"}
    assert structures_record(u.structure_entropy, u.structure_voxels, names) == {
        "tissue_a": [round(h_a, 5), n_a],
        "tissue_b": [round(h_b, 5), n_b],
    }
    u.structure_voxels[2] = 0
    assert list(structures_record(u.structure_entropy, u.structure_voxels, names)) == ["tissue_a"], "unpredicted: not kept"


def tiny_segresnet(out_channels: int = 3) -> SegResNet:
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=out_channels, init_filters=8, blocks_down=[1, 1, 1], blocks_up=[1, 1], dropout_prob=0.2)


def test_features_come_from_the_same_passes_and_the_encoder_alone_gives_the_same():
    torch.manual_seed(0)
    network = enable_mc_dropout(tiny_segresnet())
    image, hu = torch.randn(1, 20, 16, 12), torch.full((1, 20, 16, 12), 40.0)
    calls = []
    decode = network.decode  # counted: the features must come from the score's own passes
    network.decode = lambda *a: calls.append(1) or decode(*a)

    u = mc_dropout_uncertainty(network, image, hu, (16, 16, 16), samples=3, windows=2, seed=7)
    assert len(calls) == 3 * 2 and u.features.shape == (32,)  # init_filters * 2 ** (levels - 1)
    calls.clear()
    alone = mc_dropout_features(network, image, hu, (16, 16, 16), samples=3, windows=2, seed=7)
    assert calls == [], "features alone must not run the decoder"
    torch.testing.assert_close(alone, u.features)
    other_masks = mc_dropout_features(network, image, hu, (16, 16, 16), samples=3, windows=2, seed=8)
    assert not torch.equal(other_masks, u.features), "dropout was not sampling"

    assert np.allclose(decode_features(encode_features(u.features)), u.features.numpy(), rtol=1e-3, atol=1e-4)


# --- diversity ---


def test_coverage_pick_takes_the_centre_of_the_uncovered_group_not_the_outlier():
    labelled = np.array([[1.0, 0.0, 0.0]])
    candidates = np.array(
        [
            [1.0, 0.05, 0.0],  # next to the labelled study: covered
            [-1.0, 0.0, 0.0],  # a lone outlier, the farthest from everything labelled
            [0.0, 1.0, 0.0],  # the centre of an uncovered group of four
            [0.1, 1.0, 0.0],
            [-0.1, 1.0, 0.0],
            [0.0, 1.0, 0.1],
        ]
    )
    assert coverage_pick(labelled, candidates) == 2
    # k-center (the farthest from the labelled set) would have asked for the outlier:
    unit = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    assert int(np.argmax(np.linalg.norm(unit - labelled, axis=1))) == 1

    # Once the group is labelled, the next pick is elsewhere; with nothing labelled, the most central study.
    assert coverage_pick(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), np.delete(candidates, 2, axis=0)) == 1
    assert coverage_pick(np.zeros((0, 3)), np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])) in (1, 2)
    # Directions, not sizes: a scaled copy of the labelled study covers nothing new.
    assert coverage_pick(np.array([[1.0, 0.0]]), np.array([[5.0, 0.0], [0.0, 1.0]])) == 1


# --- class entropy ---


def test_noise_scale_decays_with_labelled_studies():
    assert [gumbel_scale(n, 1.0) for n in range(5)] == [1.0, 1.0, 0.5, pytest.approx(1 / 3), 0.25]
    assert gumbel_scale(4, 2.0) == 0.5 and gumbel_scale(3, 0.0) == 0.0


def test_noisy_pick_draws_in_proportion_to_score_to_the_power_one_over_scale():
    rng = np.random.default_rng(0)
    scores = np.array([1.0, 3.0, np.nan])  # NaN: a study without the structure, never picked
    picks = np.bincount([noisy_pick(scores, 1.0, rng) for _ in range(4000)], minlength=3)
    assert picks[2] == 0 and abs(picks[1] / 4000 - 0.75) < 0.03, picks
    picks = np.bincount([noisy_pick(scores, 0.5, rng) for _ in range(4000)], minlength=3)
    assert abs(picks[1] / 4000 - 0.9) < 0.02, picks  # 3^2 / (1 + 3^2)
    assert all(noisy_pick(scores, 0.0, rng) == 1 for _ in range(20)), "without noise, the greedy pick"
    with pytest.raises(ValueError):
        noisy_pick(np.array([np.nan]), 1.0, rng)


def test_class_entropy_asks_for_the_least_labelled_structure_that_a_candidate_holds():
    #                 background, liver, spleen, aorta, kidney
    labelled = np.array([10**6, 5000, 300, 40, 0])
    predicted = np.array(
        [
            [900, 400, 60, 0, 9],
            [900, 400, 0, 30, 0],
            [900, 400, 50, MIN_PREDICTED_VOXELS - 1, 0],  # stray aorta voxels: no aorta in this study
        ]
    )
    entropy = np.array([[0.1, 0.2, 0.3, np.nan, 2.0], [0.1, 0.2, np.nan, 0.4, np.nan], [0.1, 0.2, 0.5, 0.9, np.nan]])
    # The aorta: the fewest labelled voxels of the labelled structures. The kidney, never labelled, is not asked for.
    assert fewest_labelled_structure(labelled, predicted) == 3
    assert class_entropy_pick(labelled, predicted, entropy, 2, 0.0, np.random.default_rng(0)) == (1, 3), "the one study holding it"
    labelled[3] = 10**4
    assert class_entropy_pick(labelled, predicted, entropy, 2, 0.0, np.random.default_rng(0)) == (2, 2), "then the spleen"
    # Nothing labelled yet, or no labelled structure in any candidate: any structure, the one predicted largest first.
    assert fewest_labelled_structure(np.zeros(5, dtype=int), predicted) == 1
    assert fewest_labelled_structure(np.array([10**6, 0, 0, 0, 50]), predicted[1:]) == 1
    assert fewest_labelled_structure(labelled, np.zeros((3, 5), dtype=int)) is None


def test_saved_label_values_map_to_channels_by_name():
    channels = {"spleen": 1, "liver": 5, "aorta": 7}
    slicer = {"label_info": [{"name": "Liver", "idx": 1}, {"name": "Aorta", "idx": 2}, {"name": "tumour", "idx": 3}]}

    def mapped(info, layers=1):
        table = channel_table(info, channels, layers)
        return {(layer, value): int(c) for layer in range(layers) for value, c in enumerate(table[layer].tolist()) if c}

    assert mapped(slicer) == {(0, 1): 5, (0, 2): 7}
    assert mapped({"params": {"label_names": {"Spleen": 1}}}) == {(0, 1): 1}
    assert mapped({}) == {(0, 1): 1, (0, 5): 5, (0, 7): 7}, "no names: values are this model's channels"
    layered = {"label_info": [{"name": "liver", "idx": 1}, {"name": "spleen", "idx": 1, "layer": 1}]}
    assert mapped(layered, layers=2) == {(0, 1): 5, (1, 1): 1}, "overlapping segments: each layer its own"


# --- the strategies on a datastore ---

SHAPE, SPACING = (36, 30, 24), (10.0, 10.0, 10.0)
CHANNELS = {"spleen": 1, "kidney_right": 2, "liver": 5, "aorta": 7}


def write(path: Path, array: np.ndarray, spacing=SPACING) -> Path:
    nib.save(nib.Nifti1Image(array, ras_affine(array.shape, spacing)), str(path))
    return path


def datastore(root: Path, names=("a", "b", "c", "d")) -> CheckedLocalDatastore:
    root.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        write(root / f"{name}.nii.gz", make_phantom(SHAPE, SPACING, seed=seed, variation=0.5).image)
    return CheckedLocalDatastore(str(root), extensions=("*.nii.gz",), auto_reload=False)


def record(model_mtime: float = 1.0, **fields) -> dict:
    return {SCORE_KEY: {"model": "wholebody_lowres.pt", "model_mtime": model_mtime, **fields}}


def features(*values: float) -> str:
    return encode_features(torch.tensor(values))


def save_label(store, tmp_path: Path, image_id: str, counts: dict[int, int], info: dict) -> None:
    """A final label with ``counts[value]`` voxels of each value."""
    label = np.zeros(SHAPE, np.uint8).ravel()
    at = 0
    for value, n in counts.items():
        label[at : at + n] = value
        at += n
    store.save_label(image_id, str(write(tmp_path / f"{image_id}_label.nii.gz", label.reshape(SHAPE))), "final", info)


def test_diversity_covers_with_labelled_and_held_studies_of_the_same_model(tmp_path):
    store = datastore(tmp_path / "studies", names=("a", "b", "c", "d", "e"))
    save_label(store, tmp_path, "a", {5: 100}, {})
    store.update_image_info("a", record(features=features(1, 0, 0)))
    store.update_image_info("b", record(features=features(0.9, 0.1, 0), score=0.1))  # like the labelled one
    store.update_image_info("c", record(features=features(0, 1, 0), score=0.1))
    store.update_image_info("d", record(features=features(0.1, 1, 0), score=0.1))
    store.update_image_info("e", record(features=features(0, 0, 1), score=0.1))
    strategy = Exclusive(Diversity(SCORE_KEY), Handouts(30))
    first = strategy({"client_id": "one"}, store)
    assert first["selected_by"] == "diversity" and first["id"] in ("c", "d") and first["covered_by"] == 1
    # While "one" annotates it, it covers its group for "two", who is sent to the study unlike both.
    second = strategy({"client_id": "two"}, store)
    assert second["id"] == "e" and second["covered_by"] == 2

    # Features of another model are not compared: the labelled study's old features do not count.
    store.update_image_info("a", record(model_mtime=0.5, features=features(0, 0, 1)))
    assert Diversity(SCORE_KEY)({}, store)["covered_by"] == 0


def test_class_entropy_counts_saved_labels_by_name_and_targets_the_least_labelled_structure(tmp_path):
    store = datastore(tmp_path / "studies")
    # Slicer's label: its value 1 is the liver (channel 5), 2 the spleen (channel 1); 3 is unknown here.
    save_label(store, tmp_path, "a", {1: 400, 2: 50, 3: 10}, {"label_info": [{"name": "liver", "idx": 1}, {"name": "spleen", "idx": 2}, {"name": "lesion", "idx": 3}]})
    assert LabelledVoxels(CHANNELS)(store)[0].tolist() == [0, 50, 0, 0, 0, 400, 0, 0]
    store.update_image_info("b", record(score=0.1, structures={"liver": [0.2, 500], "spleen": [0.3, 80]}))
    store.update_image_info("c", record(score=0.1, structures={"liver": [0.9, 500], "spleen": [0.1, 80]}))
    store.update_image_info("d", record(score=0.1, structures={"liver": [0.1, 500], "spleen": [0.6, 80]}))

    strategy = ClassEntropy(SCORE_KEY, CHANNELS, noise_scale=0.0)
    answer = strategy({}, store)
    assert answer["selected_by"] == "class_entropy" and answer["structure"] == "spleen" and answer["labelled_voxels"] == 50
    assert answer["id"] == "d" and answer["structure_entropy"] == 0.6 and answer["noise_scale"] == 0.0

    # The aorta, predicted but in no saved label, is not asked for; once labelled, it is counted.
    store.update_image_info("c", record(score=0.1, structures={"liver": [0.9, 500], "spleen": [0.1, 80], "aorta": [0.2, 40]}))
    assert strategy({}, store)["structure"] == "spleen"
    save_label(store, tmp_path, "b", {7: 20}, {"label_names": {"aorta": 7}})  # its file is read as it is saved
    answer = strategy({}, store)
    assert (answer["structure"], answer["labelled_voxels"], answer["id"]) == ("aorta", 20, "c")


def test_strategies_say_when_they_fall_back_to_random_and_the_combination_switches(tmp_path):
    store = datastore(tmp_path / "studies")
    for strategy in (Diversity(SCORE_KEY), ClassEntropy(SCORE_KEY, CHANNELS)):
        answer = strategy({"strategy": "x"}, store)  # MONAI Label's Random needs the request's strategy
        assert answer["selected_by"] == "random" and "yet" in answer["note"] and answer["id"] in ("a", "b", "c", "d")

    for i, name in enumerate("abcd"):
        store.update_image_info(name, record(score=0.1, features=features(1, i, 0), structures={"liver": [0.1 * (i + 1), 100]}))
    combined = DiversityThenClassEntropy(Diversity(SCORE_KEY), ClassEntropy(SCORE_KEY, CHANNELS, noise_scale=0.0), studies=1)
    assert combined({}, store)["selected_by"] == "diversity", "no study labelled yet"
    save_label(store, tmp_path, "a", {5: 10}, {})
    answer = combined({}, store)
    assert answer["selected_by"] == "class_entropy" and answer["id"] == "d" and answer["structure"] == "liver"


def test_records_a_client_wrote_in_another_shape_are_ignored(tmp_path):
    """Any annotator can write image info (PUT /datastore/image/info): next-sample must still answer."""
    store = datastore(tmp_path / "studies", names=("a", "b", "c", "d", "e"))
    store.update_image_info("a", record(score=0.1, features=features(1, 0), structures={"liver": [0.5, 100]}))
    store.update_image_info("b", record(score="high", features="not base64!", structures={"liver": "much"}))
    store.update_image_info("c", record(score=float("inf"), features=features(1, 0, 0, 0), structures=["liver"]))
    store.update_image_info("d", record(score=0.2, features=features(0, 1), structures={"liver": [0.9, 1e300]}))
    store.update_image_info("e", {SCORE_KEY: "not a record"})
    assert Diversity(SCORE_KEY)({}, store)["ranked"] == 2, "b undecodable, c another length"
    assert Uncertainty(SCORE_KEY)({}, store)["id"] == "d"
    answer = ClassEntropy(SCORE_KEY, CHANNELS, noise_scale=0.0)({}, store)
    assert answer["id"] == "d" and answer["ranked"] == 2 and answer["unscored"] == 3


def test_the_scorer_keeps_structure_scores_and_features_and_features_of_labelled_studies(tmp_path):
    store = datastore(tmp_path / "studies", names=("a", "b", "c"))
    checkpoint = tmp_path / "model" / "wholebody_lowres.pt"
    checkpoint.parent.mkdir()
    torch.manual_seed(1)
    save_atomically(tiny_segresnet(8).state_dict(), str(checkpoint))
    scorer = WholeBodyUncertainty(
        network_factory=lambda: tiny_segresnet(8), checkpoint_paths=[str(checkpoint)], labels=CHANNELS,
        pixdim=SPACING, roi_size=(16, 16, 16), mc_samples=2,
    )
    summary = scorer({}, store)
    assert sorted(summary["scored"]) == ["a", "b", "c"] and summary["featured"] == []
    candidate = store.get_image_info("a")[SCORE_KEY]
    assert set(candidate["structures"]) <= set(CHANNELS) and candidate["structures"]
    assert all(0 <= h <= math.log(8) and n > 0 for h, n in candidate["structures"].values())
    assert decode_features(candidate["features"]).shape == (32,)

    save_label(store, tmp_path, "a", {5: 10}, {})
    assert scorer.pending(store) == [], "scored before it was labelled: its features are current"
    mtime = checkpoint.stat().st_mtime
    os.utime(checkpoint, (mtime + 10, mtime + 10))  # a training run published a new model
    assert scorer.pending(store) == ["b", "c", "a"], "candidates first, then the labelled study's features"
    summary = scorer({}, store)
    assert summary["featured"] == ["a"] and sorted(summary["scored"]) == ["b", "c"]
    labelled = store.get_image_info("a")[SCORE_KEY]
    assert "score" not in labelled and "structures" not in labelled and labelled["model_mtime"] == mtime + 10
    assert labelled["features"] == candidate["features"], "same weights, same masks: the same features"


def test_random_answers_when_every_study_was_handed_out_this_second(tmp_path):
    """Stock ``random`` weighs a study by the seconds since it was last handed out: 0 for all of them
    made ``random.choices`` raise (500). The same client asking again gets its study back."""
    store = datastore(tmp_path / "studies", names=("a",))
    strategy = Exclusive(Random(), Handouts(30))
    request = {"strategy": "random", "client_id": "anna"}
    first = strategy(request, store)
    store.update_image_info("a", {"strategy": {"random": {"ts": int(time.time())}}})  # as POST /activelearning records it
    again = strategy(request, store)
    assert first["id"] == again["id"] == "a" and again["weight"] >= 1


def test_random_reads_hand_out_times_a_client_wrote_in_another_shape(tmp_path):
    store = datastore(tmp_path / "studies", names=("a", "b", "c", "d"))
    store.update_image_info("a", {"strategy": {"random": {"ts": time.time() + 3600}}})  # in the future
    store.update_image_info("b", {"strategy": {"random": {"ts": "yesterday"}}})
    store.update_image_info("c", {"strategy": "random"})
    store.update_image_info("d", {"strategy": {"random": {"ts": float("nan")}}})
    picked = {Random()({"strategy": "random"}, store)["id"] for _ in range(40)}
    assert picked <= {"a", "b", "c", "d"} and len(picked) >= 2
    # Unreadable times count as never handed out; one in the future as handed out now (weight 1).
    assert handed_out_at(store.get_image_info("b"), "random") == handed_out_at(store.get_image_info("d"), "random") == 0.0


# --- stratified random ---


def test_header_group_reads_slice_spacing_and_length_along_the_long_axis_from_the_header(tmp_path):
    def group(shape, spacing, affine=None):
        path = tmp_path / "g.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), affine if affine is not None else ras_affine(shape, spacing)), str(path))
        return header_group(read_header(str(path)))

    assert group((20, 20, 400), (0.8, 0.8, 1.5)) == "thin slices, trunk"  # 600 mm
    assert group((20, 20, 120), (0.8, 0.8, 2.0)) == "standard slices, one region"  # 240 mm
    assert group((20, 20, 160), (0.8, 0.8, 5.0)) == "thick slices, whole body"  # 800 mm
    # A sagittal acquisition: the long axis is the first voxel axis (5 mm apart, 70 of them: 350 mm).
    sagittal = np.array([[0.0, 0.0, 0.8, 0.0], [0.0, 0.8, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert group((70, 20, 20), None, sagittal) == "thick slices, one region"


def test_stratified_random_takes_the_group_with_fewest_labelled_studies_and_a_lead_may_name_groups(tmp_path):
    root = tmp_path / "studies"
    root.mkdir()
    for name in ("thin_a", "thin_b", "thin_c", "thick_a", "thick_b", "thick_c"):
        spacing = (0.8, 0.8, 1.0) if name.startswith("thin") else (5.0, 5.0, 5.0)  # 100 mm vs 500 mm
        write(root / f"{name}.nii.gz", np.zeros((8, 8, 100), np.int16), spacing)
    store = CheckedLocalDatastore(str(root), extensions=("*.nii.gz",), auto_reload=False)
    strategy = StratifiedRandom()
    request = {"strategy": "stratified_random", "client_id": "carl"}

    first = strategy(request, store)
    assert first["selected_by"] == "stratified_random" and first["labelled_in_group"] == 0
    assert first["group"] in {"thin slices, one region", "thick slices, trunk"}

    handouts = Handouts(30)
    handouts.hand_out("thick_a", "anna")
    handouts.hand_out("thick_b", "ben")
    carl = Exclusive(strategy, handouts)
    picks = {carl(request, store)["id"] for _ in range(20)}
    assert picks <= {"thin_a", "thin_b", "thin_c"} and len(picks) >= 2, "studies being annotated count as labelled"
    handouts.release("thick_a")
    handouts.release("thick_b")

    label = np.zeros((8, 8, 100), np.uint8)
    store.save_label("thin_a", str(write(tmp_path / "l.nii.gz", label, (0.8, 0.8, 1.0))), "final", {})
    picks = {strategy(request, store)["id"] for _ in range(30)}
    assert picks == {"thick_a", "thick_b", "thick_c"}, "the thick group has no labelled study yet"

    store.update_image_info("thin_b", {GROUP_KEY: "arterial phase"})
    store.update_image_info("thin_c", {GROUP_KEY: 42})  # not a group name: the header decides
    assert strategy.group(store, "thin_b") == "arterial phase" and strategy.group(store, "thin_c") == "thin slices, one region"
    store.save_label("thick_a", str(write(tmp_path / "l2.nii.gz", label, (5.0, 5.0, 5.0))), "final", {})
    assert {strategy(request, store)["id"] for _ in range(20)} == {"thin_b"}, "the lead's group has no labelled study"
