"""The pieces of training as torchrun ranks (lib/trainers/distributed.py, lib/configs/distributed_training.py)
that need no process group: a rank's place from torchrun's environment, disjoint shards, the studies of a
batch, the command the server's ``multi_gpu`` runs, and the entry's refusals."""

from __future__ import annotations

import json

import pytest
import torch

from lib.conf import Conf
from lib.configs import distributed_training
from lib.trainers.distributed import World, batch_image_ids, same_studies, shard, torchrun_world


def test_a_rank_knows_its_place_from_torchrun_and_one_process_is_no_job():
    assert torchrun_world({}) is None
    assert torchrun_world({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None
    assert torchrun_world({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == World(rank=5, local_rank=1, size=8)


def test_shards_are_disjoint_cover_every_study_and_take_equal_steps():
    studies = [f"s{i}" for i in range(5)]
    shards = [shard(studies, rank, 2, equal_length=False) for rank in range(2)]
    assert set(shards[0]).isdisjoint(shards[1]) and set(shards[0]) | set(shards[1]) == set(studies)
    training = [shard(studies, rank, 2, equal_length=True) for rank in range(2)]
    assert len(training[0]) == len(training[1]) == 3, training
    assert set(training[0]).isdisjoint(training[1]), "a shorter shard repeats a study of another rank"


def test_fewer_training_studies_than_ranks_is_refused_and_validation_reads_them_all():
    with pytest.raises(ValueError, match="1 labelled studies for 2 ranks"):
        shard(["only"], 1, 2, equal_length=True)
    assert shard(["only"], 1, 2, equal_length=False) == ["only"]


def test_ranks_that_read_different_studies_are_named():
    with pytest.raises(ValueError, match=r"rank 1 does not see .*only rank 1: \['x'\]; only rank 0: \['b'\]"):
        same_studies([["a", "b"], ["a", "x"]])


def test_the_studies_of_a_batch_collated_or_as_sampled_patches():
    assert batch_image_ids({"image_id": ["a", "b"]}) == {"a", "b"}
    assert batch_image_ids([{"image_id": "a"}, {"image_id": "a"}, {"image_id": "c"}]) == {"a", "c"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU process count applies without CUDA")
def test_multi_gpu_on_cpus_runs_the_configured_gloo_processes_at_most_one_per_study():
    launch = distributed_training.torchrun_launch("spleen", Conf({"cpu_train_processes": "3"}))
    assert launch.processes(studies=10) == 3 and launch.processes(studies=2) == 2
    assert distributed_training.torchrun_launch("spleen", Conf({})).processes(studies=10) == 1
    command = launch.command(2, {"max_epochs": 1})
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert command[6:] == ["-m", "lib.configs.distributed_training", "--model", "spleen", "--request", json.dumps({"max_epochs": 1})]


def test_the_entry_refuses_what_it_cannot_use(capsys, tmp_path):
    assert distributed_training.main(["--model", "spleen", "--studies", str(tmp_path), "--model-dir", str(tmp_path), "--request", "[1]"]) == 2
    assert "--request must be a JSON object" in capsys.readouterr().err
    assert distributed_training.main(["--model", "spleen", "--studies", str(tmp_path), "--model-dir", str(tmp_path), "--request", '{"max_epochs": "x"}']) == 2
    assert "'max_epochs'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        distributed_training.main(["--model", "vista3d", "--studies", str(tmp_path)])
    assert "invalid choice: 'vista3d'" in capsys.readouterr().err

