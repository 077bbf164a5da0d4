"""Training as a torchrun job (PyTorch DDP): the server's ``multi_gpu`` option on one node (Gloo processes on
CI's CPUs), and the command every node of a multi-node job runs, against the studies a real server serves.
Each rank trains on its own studies, the ranks end with one set of weights, rank 0 alone publishes, and
``/infer`` then answers with the published checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import APP, CT, SEG, free_port, slicer_client_class, wait_for_training
from lib.networks import spleen_unet
from lib.trainers.distributed import weights_fingerprint
from lib.weights.checkpoints import load_state_dict

pytestmark = pytest.mark.e2e

SPLEEN = 1  # in the TotalSegmentator v2 label of the shared CT
# Two crops of the shared CT (3 mm), both holding some spleen: one study for each of two ranks.
CROPS = {
    "left": (slice(0, 64), slice(10, 74), slice(0, 30)),
    "right": (slice(40, 104), slice(10, 74), slice(0, 30)),
}


def write_studies(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    for name, crop in CROPS.items():
        nib.save(nib.load(CT).slicer[crop], studies / f"{name}.nii.gz")
    return studies, tmp_path / "model"


def save_labels(client, tmp_path) -> None:
    """The spleen of each crop, saved as an annotator saves it from Slicer."""
    ct, seg = nib.load(CT), nib.load(SEG)
    for name, crop in CROPS.items():
        spleen = (np.asarray(seg.slicer[crop].dataobj) == SPLEEN).astype(np.uint8)
        assert spleen.any(), name
        label = tmp_path / f"{name}_label.nii.gz"
        nib.save(nib.Nifti1Image(spleen, ct.slicer[crop].affine), label)
        client.save_label(name, str(label), params={"label_info": [{"name": "spleen", "idx": 1}]})


def infer(client, tmp_path) -> np.ndarray:
    result, _ = client.infer("spleen", "left", {"result_extension": ".nii.gz"})
    return np.asarray(nib.load(result).dataobj)


def check_one_ddp_run(stats: dict, published: str, backend: str, processes: int) -> None:
    """The run's ``distributed`` stats: disjoint shards covering the studies, one set of weights, one publish
    by rank 0, and the published file holds those weights."""
    run = stats["distributed"]
    assert run["backend"] == backend and run["world_size"] == processes, run
    ranks = run["ranks"]
    assert [r["rank"] for r in ranks] == list(range(processes))
    shards = [set(r["trained"]) for r in ranks]
    assert all(shards) and sum(len(s) for s in shards) == len(set().union(*shards)), f"ranks shared studies: {shards}"
    assert set().union(*shards) == set(CROPS), shards
    assert len({r["weights_sha256"] for r in ranks}) == 1 and ranks[0]["weights_sha256"], ranks
    assert [r["published"] for r in ranks] == [[published]] + [[]] * (processes - 1), ranks
    network = spleen_unet()
    network.load_state_dict(load_state_dict(published, map_location="cpu"))
    assert weights_fingerprint(network) == ranks[0]["weights_sha256"], "the published file is not the ranks' weights"


def test_multi_gpu_option_and_multi_node_command_on_two_gloo_processes(start_server, tmp_path):
    studies, model_dir = write_studies(tmp_path)
    server = start_server({"models": "spleen", "cpu_train_processes": "2"}, studies=studies, model_dir=model_dir)
    client = slicer_client_class()(server.url, tmpdir=str(tmp_path))
    save_labels(client, tmp_path)
    published = str(model_dir / "spleen.pt")

    assert client.info()["models"]["spleen"]["untrained"] is True
    untrained = infer(client, tmp_path)

    # The server's multi_gpu option: torchrun on this node, 2 Gloo processes (no GPU here).
    client.train_start("spleen", {"max_epochs": 1, "multi_gpu": True})
    status = wait_for_training(client, timeout=600)
    assert status["status"] == "DONE", status
    check_one_ddp_run(client.info()["train_stats"]["spleen"], published, "gloo", 2)
    assert client.info()["models"]["spleen"]["untrained"] is False
    first = infer(client, tmp_path)
    assert not np.array_equal(first, untrained), "/infer still answers with the untrained network"
    first_mtime = os.path.getmtime(published)

    # The command each node runs in a multi-node job (here one node, the rendezvous on 127.0.0.1), against the
    # server's studies folder and model_dir: the server then serves what it published.
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--node_rank", "0", "--nproc_per_node", "2",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
        "-m", "lib.configs.distributed_training", "--model", "spleen", "--studies", str(studies),
        "--model-dir", str(model_dir), "--max-epochs", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(APP)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert os.path.getmtime(published) > first_mtime
    check_one_ddp_run(client.info()["train_stats"]["spleen"], published, "gloo", 2)
    second = infer(client, tmp_path)
    assert not np.array_equal(second, first), "/infer did not pick up the checkpoint the torchrun job published"


def test_nccl_on_every_gpu(start_server, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL training needs at least 2 CUDA GPUs (one per rank); CI has none")
    studies, model_dir = write_studies(tmp_path)
    server = start_server({"models": "spleen"}, studies=studies, model_dir=model_dir)
    client = slicer_client_class()(server.url, tmpdir=str(tmp_path))
    save_labels(client, tmp_path)
    client.train_start("spleen", {"max_epochs": 1, "multi_gpu": True})
    status = wait_for_training(client, timeout=600)
    assert status["status"] == "DONE", status
    # One process per GPU, at most one per labelled study.
    check_one_ddp_run(client.info()["train_stats"]["spleen"], str(model_dir / "spleen.pt"), "nccl", len(CROPS))
