"""The base of this app's trainers: they publish to where the infer tasks look, after every epoch, so users
get the better model while training goes on (the infer tasks reload a checkpoint when its mtime changes),
train with freed CPU memory reused (lib/acceleration/cpu_memory.py), take only parameters of the declared
types (lib/trainers/params.py), skip studies that fail, naming them in the train stats
(lib/trainers/skipped_studies.py), and, given a torchrun launch, train across processes and nodes
(lib/trainers/distributed.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from datetime import datetime
from typing import Any

import torch
from ignite.engine import Events
from monai.data import CacheDataset, Dataset, PersistentDataset, partition_dataset
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from lib.acceleration.cpu_memory import reusing_freed_memory
from lib.datastore.atomic import write_json_atomically
from lib.trainers import distributed, params
from lib.trainers.epoch_loss import EpochLoss
from lib.trainers.skipped_studies import NoStudyToTrainError, SkippedStudies, SkippingDataset

logger = logging.getLogger(__name__)


class PublishingTrainTask(BasicTrainTask):
    #: The request parameters this trainer takes and their parsers; subclasses add theirs.
    request_params: dict[str, params.Parser] = params.MONAI_LABEL_PARAMS

    def __init__(self, model_dir: str, description: str, config: dict[str, Any], torchrun: distributed.TorchrunLaunch | None = None, **kwargs):
        """``torchrun``: how ``multi_gpu`` runs this trainer as a torchrun job (the config builds it). Without
        it, ``multi_gpu`` is MONAI Label's own (processes spawned on one node's GPUs)."""
        # A list shows as a choice in Slicer, the first entry chosen; a plain Dataset reads each study
        # when it is trained on instead of holding every resampled CT in memory.
        choices = {"dataset": list(params.DATASETS), "tracking": ["None", "mlflow"]}
        super().__init__(model_dir, description, config={**choices, **config}, **kwargs)
        self._torchrun = torchrun
        self._world: distributed.World | None = None  # set while this process trains as one rank of a torchrun job

    def checked_params(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` converted to the declared types; ConfError (422) naming what cannot be used."""
        return params.checked(request, self.request_params)

    def __call__(self, request, datastore):
        # Checked again here: the values the run uses are typed however the process was started.
        request = self.checked_params({**self._config, **request})
        # On the CPU a 96^3 iteration of the wholebody SegResNet (forward, backward, AdamW) took 9.3 s with
        # glibc's default of fresh pages for every large tensor, 6.7 s with freed ones reused.
        with reusing_freed_memory():
            if self._torchrun:
                world = distributed.torchrun_world()
                if world:
                    return self._train_rank(world, request, datastore)
                if request["multi_gpu"]:
                    processes = self._torchrun.processes(len(self.pre_process(request, datastore)))
                    if processes > 1:
                        return self._run_torchrun(request, processes)
                # MONAI Label's own multi-GPU path would spawn processes with a fixed 127.0.0.1 master.
                request = {**request, "multi_gpu": False}
            return super().__call__(request, datastore)

    # ------------------------------------------------------------------ torchrun (lib/trainers/distributed.py)
    def _run_torchrun(self, request, processes: int):
        """This run as a torchrun job on this node. The ranks read the server's studies and --conf from the
        environment MONAI Label gives its task processes (MONAI_LABEL_STUDIES, MONAI_LABEL_APP_CONF, and
        PYTHONPATH with the app)."""
        command = self._torchrun.command(processes, request)
        logger.info(f"Training in {processes} processes with torchrun: {' '.join(command)}")
        returncode = subprocess.call(command)
        if returncode:
            raise RuntimeError(f"torchrun ended with exit code {returncode}; the ranks' errors are above")
        return self.stats()

    def _train_rank(self, world: distributed.World, request, datastore):
        """One rank of a torchrun job: its own shard of the labelled studies, gradients averaged by DDP, rank 0
        keeping the best checkpoint and publishing it; the train stats get what every rank trained on."""
        with distributed.process_group(world):
            request = {
                **request,
                # MONAI Label's own multi-GPU path (one spawned process per GPU index of this node) stays off.
                "multi_gpu": False,
                "device": str(world.device),
                "run_id": distributed.broadcast(datetime.now().strftime("%Y%m%d_%H%M%S")),  # one run folder
            }
            datalist = distributed.in_turns(world, lambda: self.pre_process(request, datastore))
            datalist = distributed.agreed_datalist(datalist, self.image_id)
            self._world, self._rank_record = world, distributed.RankRecord(world)
            try:
                self.train(world.rank, world.size, request, datalist)
            finally:
                self._world = None
            ranks = distributed.gathered(self._rank_record.as_stats())
            if world.rank == 0:
                self._add_to_stats("distributed", {"backend": world.backend, "world_size": world.size, "ranks": ranks})
            distributed.in_turns(world, lambda: self.cleanup(request))
        for record in ranks:
            logger.info(f"rank {record['rank']} trained on {record['trained']}; weights sha256 {record['weights_sha256']}")
        if len({record["weights_sha256"] for record in ranks}) != 1:
            raise RuntimeError(f"the ranks ended with different weights: {ranks}")
        return self.stats()

    def _device(self, context: Context):
        return self._world.device if self._world else super()._device(context)

    def _create_network_and_optimizer(self, context: Context):
        network, optimizer = super()._create_network_and_optimizer(context)
        if self._world:
            # DDP averages the gradients of every rank in backward, so the ranks stay one model.
            device_ids = [context.device.index] if context.device.type == "cuda" else None
            network = torch.nn.parallel.DistributedDataParallel(network, device_ids=device_ids, find_unused_parameters=self._find_unused_parameters)
        return network, optimizer

    # ------------------------------------------------------------------ training
    def train(self, rank, world_size, request, datalist):
        self._skipped = SkippedStudies()
        self._studies = [self.image_id(item) for item in datalist]  # what a published model version was trained on
        try:
            return super().train(rank, world_size, request, datalist)
        except Exception as e:
            # ThreadDataLoader reads in a thread of its own: a dataset's error ends the epoch without items, and
            # what the run reports is some later failure on no data.
            if self._skipped.nothing_left:
                raise NoStudyToTrainError(f"no study could be read for training: {self._skipped}") from e
            raise

    def image_id(self, item: dict[str, Any]) -> str:
        """The study of a datalist item, as the train stats name it."""
        return item.get("image_id") or os.path.basename(item["image"])

    def _dataset(self, context: Context, datalist, is_train, replace_rate=0.25):
        """MONAI Label's datasets, each wrapped to skip studies that fail; the caching ones fill their cache
        as items are read, so that a failure shows where it can be caught. A torchrun rank reads its own shard."""
        if self._world:
            datalist = distributed.shard(datalist, self._world.rank, self._world.size, equal_length=is_train)
        elif context.multi_gpu:
            world_size = torch.distributed.get_world_size()
            if len(datalist) // world_size:  # every gpu gets full data when datalist is smaller
                datalist = partition_dataset(data=datalist, num_partitions=world_size, even_divisible=True)[context.local_rank]
        transforms = self._validate_transforms(
            self.train_pre_transforms(context) if is_train else self.val_pre_transforms(context),
            "Training" if is_train else "Validation",
        )
        if context.dataset_type == "CacheDataset":
            dataset = CacheDataset(datalist, transforms, runtime_cache=True)
        elif context.dataset_type == "PersistentDataset":
            dataset = PersistentDataset(datalist, transforms, cache_dir=os.path.join(context.cache_dir, "pds"))
        else:
            dataset = Dataset(datalist, transforms)
        return SkippingDataset(dataset, datalist, self.image_id, self._skipped), datalist

    def finalize(self, context: Context):
        super().finalize(context)
        engine = context.evaluator or context.trainer
        if self._world:
            network = context.network.module
            # After the CheckpointLoader MONAI Label attached when it built the trainer.
            context.trainer.add_event_handler(Events.STARTED, lambda _: distributed.broadcast_weights(network))
            self._rank_record.attach(context.trainer, network)
            # Before rank 0 writes the stats: the studies every rank skipped.
            engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self._skipped.merge(distributed.gathered(self._skipped.reasons)))
        if context.local_rank == 0:  # one writer: MONAI Label's rank 0, or a torchrun job's global rank 0
            engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self._publish_and_record(context))
            # After MONAI Label's handler, which writes the stats file on the same event.
            engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self._add_to_stats("skipped", self._skipped.as_stats()))
            loss = EpochLoss()
            loss.attach(context.trainer)
            engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self._add_to_stats("loss", loss.epoch_mean))

    def _add_to_stats(self, key: str, value: Any) -> None:
        """Adds ``key`` to the train stats MONAI Label wrote (``/info/`` ``train_stats``); the server reads them at any time."""
        if not os.path.exists(self._stats_path):
            return
        with open(self._stats_path) as f:
            stats = json.load(f)
        stats[key] = value
        write_json_atomically(self._stats_path, stats, indent=2)

    def _publish_and_record(self, context: Context) -> None:
        published = self._publish(context)
        if published and self._world:  # a torchrun job's stats say which ranks published what
            self._rank_record.published.append(published)

    def _publish(self, context: Context) -> str | None:
        """Writes this run's model (atomically) where the infer task reads it, if it has a better one; the
        file written, or None."""
        raise NotImplementedError

    def stats(self):
        # MONAI Label copies train_stats.json in place after every epoch: read during that copy, or after a
        # crash in it, the file is cut short. /info/ then shows no stats for this trainer instead of failing.
        try:
            return super().stats()
        except ValueError:
            return {}
