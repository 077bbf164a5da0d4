"""The base of this app's trainers: they publish to where the infer tasks look, after every epoch, so users
get the better model while training goes on (the infer tasks reload a checkpoint when its mtime changes),
train with freed CPU memory reused (lib/acceleration/cpu_memory.py), take only parameters of the declared
types (lib/trainers/params.py), and skip studies that fail, naming them in the train stats
(lib/trainers/skipped_studies.py)."""

from __future__ import annotations

import os
from typing import Any

import torch
from ignite.engine import Events
from monai.data import CacheDataset, Dataset, PersistentDataset, partition_dataset
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from lib.acceleration.cpu_memory import reusing_freed_memory
from lib.trainers import params
from lib.trainers.skipped_studies import NoStudyToTrainError, SkippedStudies, SkippingDataset


class PublishingTrainTask(BasicTrainTask):
    #: The request parameters this trainer takes and their parsers; subclasses add theirs.
    request_params: dict[str, params.Parser] = params.MONAI_LABEL_PARAMS

    def __init__(self, model_dir: str, description: str, config: dict[str, Any], **kwargs):
        # A list shows as a choice in Slicer, the first entry chosen; a plain Dataset reads each study
        # when it is trained on instead of holding every resampled CT in memory.
        choices = {"dataset": list(params.DATASETS), "tracking": ["None", "mlflow"]}
        super().__init__(model_dir, description, config={**choices, **config}, **kwargs)

    def checked_params(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` converted to the declared types; ConfError (422) naming what cannot be used."""
        return params.checked(request, self.request_params)

    def __call__(self, request, datastore):
        # Checked again here: the values the run uses are typed however the process was started.
        request = self.checked_params({**self._config, **request})
        # On the CPU a 96^3 iteration of the wholebody SegResNet (forward, backward, AdamW) took 9.3 s with
        # glibc's default of fresh pages for every large tensor, 6.7 s with freed ones reused.
        with reusing_freed_memory():
            return super().__call__(request, datastore)

    def train(self, rank, world_size, request, datalist):
        self._skipped = SkippedStudies()
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
        as items are read, so that a failure shows where it can be caught."""
        if context.multi_gpu:
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
        if context.local_rank == 0:  # one writer under multi-GPU training
            engine = context.evaluator or context.trainer
            engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self._publish(context))
            # After MONAI Label's handler, which writes the stats file on the same event.
            engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self._skipped.write_to(self._stats_path))

    def _publish(self, context: Context) -> None:
        """Writes this run's model (atomically) where the infer task reads it, if it has a better one."""
        raise NotImplementedError

    def stats(self):
        # MONAI Label copies train_stats.json in place after every epoch: read during that copy, or after a
        # crash in it, the file is cut short. /info/ then shows no stats for this trainer instead of failing.
        try:
            return super().stats()
        except ValueError:
            return {}
