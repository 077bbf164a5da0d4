"""The active learning loop through the 3D Slicer module's own client, three annotators at once:
next sample by the strategy ``/info/`` lists first (Slicer's default), by diversity then class
entropy, and by uncertainty; infer, save label, train, the scores follow the new model, next sample."""

from __future__ import annotations

import shutil
import time

import nrrd
import numpy as np
import pytest

from conftest import CT, slicer_client_class, wait_for_training
from lib.phantom import write_phantom

pytestmark = pytest.mark.e2e

KEY = "wholebody_uncertainty"
FIRST = "stratified_random"  # listed first in /info/: nothing beat it by the shifted-site study's rule
COMBINED = "diversity_then_class_entropy"
# Small phantoms at the lowres model's 3 mm, one inference window each.
PHANTOM = {"shape": (64, 54, 42), "spacing": (3.0, 3.0, 3.0)}


def records(client) -> dict[str, dict]:
    """What ``/datastore/?output=all`` shows of each study's record, and whether it is labelled."""
    objects = client.datastore()["objects"]
    return {i: (o["image"]["info"].get(KEY), "final" in o.get("labels", {})) for i, o in objects.items()}


def wait_for_scores(client, model: str, timeout: float = 240) -> dict[str, dict]:
    """The unlabeled studies' records once every study has its record from ``model``: a score for
    the unlabeled ones, features for the labelled ones."""
    start = time.time()
    while time.time() - start < timeout:
        current = records(client)
        if all(r and r["model"] == model and ("features" if labelled else "score") in r for r, labelled in current.values()):
            return {i: r for i, (r, labelled) in current.items() if not labelled}
        time.sleep(2)
    raise TimeoutError(f"records from '{model}' missing after {timeout} s: {current}")


def test_next_sample_infer_save_train_next_sample(start_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_LABEL_AUTO_UPDATE_SCORING", "true")  # as served: scoring at start-up and after training
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(CT, studies / "ct.nii.gz")
    for seed in (1, 2, 3):
        write_phantom(studies / f"phantom{seed}.nii.gz", seed=seed, variation=0.5, **PHANTOM)
    # Two passes over one 48^3 window per study keep the test short; the defaults are 4 and 64^3.
    # Diversity for the first study only, so that the loop reaches class entropy after one label.
    conf = {"models": "wholebody", "highres": "false", "al_mc_samples": "2", "al_roi": "48", "al_diversity_studies": "1"}
    server = start_server(conf, studies=studies)
    Client = slicer_client_class()
    first, second, third = (Client(server.url, str(tmp_path), f"annotator-{i}") for i in (1, 2, 3))

    info = first.info()
    assert list(info["strategies"])[0] == FIRST, list(info["strategies"])
    assert {COMBINED, "diversity", "class_entropy", "uncertainty", "first", "stratified_random"} <= set(info["strategies"]) and KEY in info["scoring"]

    # Scoring started with the server, in the background, with the untrained (seeded) weights.
    before = wait_for_scores(first, "untrained")
    assert set(before) == {"ct", "phantom1", "phantom2", "phantom3"}
    assert all(r["structures"] and r["features"] for r in before.values()), before

    # Three annotators at once: Slicer's default strategy, the combined one and uncertainty.
    sample = first.next_sample(FIRST, {})
    combined = second.next_sample(COMBINED, {})
    assert combined["selected_by"] == "diversity" and combined["covered_by"] == 1, "the study annotator-1 holds counts as covered"
    taken = third.next_sample("uncertainty", {})
    assert taken["selected_by"] == "uncertainty", taken
    free = {i: r for i, r in before.items() if i not in (sample["id"], combined["id"])}
    assert taken["id"] == max(free, key=lambda i: free[i]["score"]), "one study handed out to two annotators"
    assert len({sample["id"], combined["id"], taken["id"]}) == 3

    slicer_params = {"result_extension": ".nrrd", "result_dtype": "uint8"}
    result_file, params = first.infer("wholebody", sample["id"], slicer_params)
    prediction, header = nrrd.read(result_file)
    corrected = np.zeros_like(prediction)
    x, y, z = prediction.shape
    corrected[x // 4 : x // 2, y // 4 : 3 * y // 4, z // 4 : 3 * z // 4] = 5  # the annotator paints the liver
    label_file = tmp_path / "corrected.nrrd"
    nrrd.write(str(label_file), corrected, header)
    first.save_label(sample["id"], str(label_file), params={"label_info": [{"name": "liver", "idx": 5}]})

    first.train_start("wholebody", {"max_epochs": 1, "highres": False, "val_split": 0.0})
    status = wait_for_training(first)
    assert status["status"] == "DONE", status

    # The new model scores the studies left and takes the labelled one's features, in the background.
    after = wait_for_scores(first, "wholebody_lowres.pt")
    assert set(after) == {"ct", "phantom1", "phantom2", "phantom3"} - {sample["id"]}

    following = first.next_sample(FIRST, {})
    assert following["id"] in after and following["id"] not in (combined["id"], taken["id"]), following
    assert following[KEY]["model"] == "wholebody_lowres.pt"
    by_class = second.next_sample(COMBINED, {})  # one study labelled: class entropy from now on
    assert by_class["selected_by"] == "class_entropy" and by_class["structure"] in info["models"]["wholebody"]["labels"], by_class
    assert by_class["id"] not in (following["id"], taken["id"]), "a study another annotator holds"
    again = third.next_sample("uncertainty", {})
    assert again["selected_by"] == "uncertainty" and again["id"] not in (following["id"], by_class["id"]), again
