"""Finetuning / continual learning of VISTA3D on the labels users save, as the bundle's
``train.json`` + ``train_continual.json`` + ``scripts/trainer.py`` describe.

* ``label_mapping`` ``[[local, global], ...]`` maps a saved label's values to global class ids. Without
  it, each saved label is mapped by its segment names (Slicer's ``label_info``): a VISTA3D class keeps
  its id (``liver`` -> 1, also ``kidney_left`` -> 14), a class learned before keeps its id, and any
  other name gets a free id in 133..254. Values not mapped are unlabelled (0).
* every iteration samples class and point prompts from the patch's labels with
  ``monai.apps.vista3d.sampler.sample_prompt_pairs`` over ``[0] + mapped ids`` (``drop_label_prob`` /
  ``drop_point_prob``, 0.25 each, ``max_point`` 5), runs the network with both, and averages DiceCE
  (sigmoid, squared_pred) over the prompts; AdamW lr 1e-4 (train.json).
* images preprocessed as inference does (lib/pipelines/vista3d.py: ``--conf vista3d_spacing``, foreground
  crop, HU window, RAS), the label resampled with them (nearest); patches of ``patch_size`` (default
  128^3; request param).
* with validation images: the class head over the inference sliding window (its window and overlap),
  mean Dice over the mapped classes; the best checkpoint is published. Without (one labelled image,
  ``val_split`` 0): the weights after each epoch are.

Publishing writes ``<model_dir>/vista3d.pt`` atomically, then ``<model_dir>/vista3d_classes.json``
with the learned names: the infer tasks pick both up on their next request.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Sequence

import torch
from monai.apps.vista3d.sampler import sample_prompt_pairs
from monai.apps.vista3d.transforms import VistaPostTransformd
from monai.data import MetaTensor, partition_dataset
from monai.engines.utils import IterationEvents
from monai.handlers import MeanDice, from_engine
from monai.inferers import Inferer, SlidingWindowInfererAdapt
from monai.losses import DiceCELoss
from monai.transforms import (
    AsDiscreted,
    MapTransform,
    RandCropByPosNegLabeld,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ResizeWithPadOrCropd,
    SpatialPadd,
)
from monai.utils.enums import CommonKeys as Keys
from monailabel.tasks.train.basic_train import Context

from lib.conf import as_int
from lib.datastore.datalist import labeled_items
from lib.labels.saved import Segment
from lib.pipelines import vista3d as pipeline
from lib.trainers import params
from lib.trainers.publishing import PublishingTrainTask
from lib.transforms.partial_labels import LayersToMultiHotd
from lib.vista3d.classes import LearnedClasses, label_mapping_for, parse_label_mapping, vista3d_resolver, write_learned_classes
from lib.vista3d.prompts import PromptError
from lib.weights.checkpoints import load_state_dict, save_atomically
from lib.weights.official import OfficialCheckpoint

logger = logging.getLogger(__name__)


def parse_patch_size(value: Any) -> tuple[int, int, int]:
    """``96``, ``"96"``, ``"96,96,64"`` or ``[96, 96, 64]`` -> three sizes (each >= 32, a multiple of 16)."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [v for v in str(value).replace("[", "").replace("]", "").split(",") if v.strip()]
    sizes = [as_int(v, "patch_size", minimum=32) for v in items]
    if len(sizes) == 1:
        sizes *= 3
    if len(sizes) != 3 or any(s % 16 for s in sizes):
        raise PromptError(f"'patch_size' must be one or three sizes, multiples of 16 (>= 32), got {value!r}")
    return tuple(sizes)  # type: ignore[return-value]


class MapLabelsd(MapTransform):
    """Label values -> other values by a lookup table; values not in it become 0. The table comes from the
    item (``mapping_key``: JSON ``[[from, to], ...]`` or ``[[from, to, layer], ...]``, layer -1 = every
    layer of a layered label) or is fixed (``mapping``, for every layer)."""

    def __init__(self, keys, mapping_key: str | None = None, mapping: Sequence[tuple[int, int]] | None = None):
        super().__init__(keys)
        self.mapping_key = mapping_key
        self.mapping = mapping

    def __call__(self, data):
        d = dict(data)
        entries = json.loads(d[self.mapping_key]) if self.mapping_key else self.mapping
        for key in self.key_iterator(d):
            label = d[key]
            raw = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
            lut = torch.zeros(raw.shape[0], 256, dtype=torch.uint8)
            for local, glob, *layer in entries:
                lut[slice(None) if not layer or layer[0] < 0 else int(layer[0]), int(local)] = int(glob)
            index = raw.round().long().clamp(0, 255)
            mapped = torch.stack([lut[i].to(raw.device)[index[i]] for i in range(raw.shape[0])])
            out = label.clone() if isinstance(label, torch.Tensor) else raw.clone()
            out.copy_(mapped.to(out.dtype))  # keeps a MetaTensor's affine and meta
            d[key] = out
        return d


def _mask(labels: torch.Tensor, class_id) -> torch.Tensor:
    """(B, layers, *spatial) global ids -> (B, 1, *spatial): where any layer is the class."""
    return (labels == class_id).any(1, keepdim=True)


def _flattened(labels: torch.Tensor) -> torch.Tensor:
    """One label map for prompt sampling: where segments of several layers overlap, the last layer's."""
    flat = labels[:, :1].clone()
    for layer in range(1, labels.shape[1]):
        flat = torch.where(labels[:, layer : layer + 1] > 0, labels[:, layer : layer + 1], flat)
    return flat


class ClassPromptInferer(Inferer):
    """Validation: the class head over a sliding window for ``class_ids`` -> [1, B, H, W, D] logits, with the
    window and overlap of the ``vista3d`` infer task (lib/vista3d/point_inferer.py ``sliding_window``)."""

    def __init__(self, roi_size: Sequence[int], overlap: float, class_ids: Sequence[int]):
        super().__init__()
        self.roi_size = roi_size
        self.overlap = overlap
        self.class_ids = list(class_ids)

    def __call__(self, inputs, network, *args, **kwargs):
        class_vector = torch.tensor(self.class_ids, device=inputs.device).unsqueeze(-1)
        inferer = SlidingWindowInfererAdapt(
            roi_size=self.roi_size, sw_batch_size=1, overlap=self.overlap, with_coord=True, padding_mode="replicate"
        )
        return inferer(inputs, network, transpose=True, class_vector=class_vector)


class Vista3DTrainer(PublishingTrainTask):
    request_params = {
        **PublishingTrainTask.request_params,
        # One study's prompts per iteration (sample_prompt_pairs takes one label set).
        "train_batch_size": params.integer(minimum=1, maximum=1),
        "patch_size": params.parsed_by(parse_patch_size),
        "label_mapping": params.parsed_by(parse_label_mapping),
        "drop_label_prob": params.number(0.0, 1.0),
        "drop_point_prob": params.number(0.0, 1.0),
        "max_point": params.integer(minimum=1),
        "learning_rate": params.number(0.0, 1.0),
    }

    def __init__(
        self,
        model_dir: str,
        network_factory: Callable[[], torch.nn.Module],
        checkpoint: OfficialCheckpoint,
        classes_path: str,
        pixdim: Sequence[float],
        hu_window: Sequence[float],
        crop_margin: int,
        roi_size: Sequence[int],
        overlap: float,
        max_epochs: int,
        val_split: float,
    ):
        """``roi_size``, ``overlap``: the infer task's sliding window (validation's; ``roi_size`` is the default
        ``patch_size`` too)."""
        super().__init__(
            model_dir,
            "Finetune VISTA3D on saved labels; new structures become classes 133..254",
            config={
                "max_epochs": max_epochs,
                "val_split": val_split,
                "patch_size": ",".join(str(p) for p in roi_size),
                "label_mapping": "",
                "drop_label_prob": 0.25,
                "drop_point_prob": 0.25,
                "max_point": 5,
                "learning_rate": 1e-4,
            },
            load_strict=True,
            tracking=None,
        )
        self._network_factory = network_factory
        self.checkpoint = checkpoint
        self.learned = LearnedClasses(classes_path)
        self.classes_path = classes_path
        self.pixdim = tuple(pixdim)
        self.hu_window = tuple(hu_window)
        self.crop_margin = crop_margin
        self.roi_size = tuple(roi_size)
        self.overlap = overlap
        self._run: dict[str, Any] = {}

    # ------------------------------------------------------------------ request
    def __call__(self, request, datastore):
        request = self.checked_params({**self._config, **request})
        keys = ("patch_size", "label_mapping", "drop_label_prob", "drop_point_prob", "max_point", "learning_rate", "val_split")
        self._run = {**{key: request[key] for key in keys}, "learned": self.learned.get(), "new_classes": {}}
        return super().__call__(request, datastore)

    def pre_process(self, request, datastore):
        """Saved labels with their mapping to global ids; new names get ids 133..254."""
        run = self._run
        datalist = []
        for item in labeled_items(datastore, os.path.join(self._model_dir, "layered_labels")):
            image_id, segments = item.pop("image_id"), item.pop("segments")
            known = {**run["learned"], **run["new_classes"]}
            mapping, new = label_mapping_for(segments, known, run["label_mapping"], reserved=run["new_classes"].values())
            if not mapping:
                logger.warning(f"vista3d: label of {image_id} has no segment to learn (segments {[s.name for s in segments]}); skipped")
                continue
            run["new_classes"].update(new)
            ids = sorted({g for _, g, _ in mapping})
            datalist.append({**item, "image_id": image_id, "label_mapping": json.dumps(mapping), "label_set": json.dumps([0, *ids])})
            logger.info(f"vista3d: {image_id} label mapping {mapping}")
        if not datalist:
            raise PromptError("vista3d: no saved label to train on (save a label with named segments, or pass label_mapping)")
        run["class_ids"] = sorted({i for d in datalist for i in json.loads(d["label_set"]) if i})
        logger.info(f"vista3d: training classes {run['class_ids']}; new classes {run['new_classes']}")
        return datalist

    def partition_datalist(self, context: Context, shuffle=False):
        datalist = context.datalist
        split = self._run["val_split"]
        if split > 0 and len(datalist) > 1:
            train, val = partition_dataset(datalist, ratios=[1 - split, split], shuffle=shuffle)
            if train and val:
                return train, val
        return datalist, []  # no validation: the weights after each epoch are published

    # ------------------------------------------------------------------ model
    def network(self, context: Context):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return self._network_factory()

    def load_path(self, output_dir, pretrained=True):
        if not pretrained:
            return None
        for path in reversed(self.checkpoint.paths):
            if os.path.isfile(path):
                return path
        logger.warning("vista3d: no checkpoint, finetuning starts from random weights")
        return None

    def optimizer(self, context: Context):
        return torch.optim.AdamW(context.network.parameters(), lr=self._run["learning_rate"], weight_decay=1e-5)

    def loss_function(self, context: Context):
        return DiceCELoss(include_background=True, sigmoid=True, smooth_dr=1e-5, smooth_nr=0, squared_pred=True, to_onehot_y=False)

    # ------------------------------------------------------------------ data
    def _preprocessing(self, *label_handling) -> list:
        """The infer tasks' preprocessing with the label resampled alongside, then the label's own handling."""
        return [*pipeline.preprocessing(self.pixdim, self.hu_window, self.crop_margin, label_key="label"), *label_handling]

    def train_pre_transforms(self, context: Context):
        keys, patch = ("image", "label"), self._run["patch_size"]
        return [
            *self._preprocessing(MapLabelsd(keys="label", mapping_key="label_mapping")),
            SpatialPadd(keys=keys, spatial_size=patch, mode=("constant", "constant")),
            RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=patch, pos=1, neg=1, num_samples=1),
            ResizeWithPadOrCropd(keys=keys, spatial_size=patch),
            RandScaleIntensityd(keys="image", prob=0.1, factors=0.1),
            RandShiftIntensityd(keys="image", prob=0.1, offsets=0.1),
        ]

    def train_post_transforms(self, context: Context):
        return None  # the iteration leaves one-hot pred/label of its first prompt for the metric

    def train_key_metric(self, context: Context):
        return {"train_mean_dice": MeanDice(output_transform=from_engine(["pred", "label"]), include_background=False)}

    def train_iteration_update(self, context: Context):
        return self._iteration

    def _iteration(self, engine, batchdata: dict[str, Any]):
        """One step of the bundle's ``Vista3dTrainer._iteration`` (prompts sampled from the patch)."""
        run = self._run
        inputs, labels = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        label_set = json.loads(batchdata["label_set"][0])
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: labels}
        label_prompt, point, point_label, prompt_class = sample_prompt_pairs(
            _flattened(labels),
            label_set,
            max_point=run["max_point"],
            max_prompt=None,
            max_foreprompt=None,
            max_backprompt=None,
            drop_label_prob=run["drop_label_prob"],
            drop_point_prob=run["drop_point_prob"],
            include_background=False,
        )
        network = engine.network
        network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if prompt_class is None:  # nothing to prompt in this patch: skip the step
            engine.state.output[Keys.LOSS] = torch.tensor(0.0, device=engine.state.device)
            engine.state.output[Keys.PRED] = engine.state.output[Keys.LABEL] = torch.zeros((1, 2, 1, 1, 1), device=inputs.device)
            return engine.state.output
        cuda = engine.state.device.type == "cuda" and engine.amp

        with torch.autocast("cuda", enabled=cuda):
            outputs = network(input_images=inputs, point_coords=point, point_labels=point_label, class_vector=label_prompt)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = torch.tensor(0.0, device=engine.state.device)
            for i in range(len(prompt_class)):
                loss = loss + engine.loss_function(outputs[[i]].float(), _mask(labels, prompt_class[i]))
            loss = loss / max(len(prompt_class), 1)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if cuda and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        with torch.no_grad():  # the first prompt's mask for the train metric, before MODEL_COMPLETED decollates
            pred = outputs[[0]].detach().float() > 0
            target = _mask(labels, prompt_class[0])
            engine.state.output[Keys.PRED] = torch.cat([~pred, pred], 1).float()
            engine.state.output[Keys.LABEL] = torch.cat([~target, target], 1).float()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    # ------------------------------------------------------------------ validation
    def _val_mapping(self) -> list[tuple[int, int]]:
        return [(cid, n + 1) for n, cid in enumerate(self._run["class_ids"])]

    def val_pre_transforms(self, context: Context):
        # local -> global -> index in the validated classes (1..B), as the bundle's valid_remap
        return self._preprocessing(MapLabelsd(keys="label", mapping_key="label_mapping"), MapLabelsd(keys="label", mapping=self._val_mapping()))

    def val_inferer(self, context: Context):
        return ClassPromptInferer(self.roi_size, self.overlap, self._run["class_ids"])

    def val_post_transforms(self, context: Context):
        n = len(self._run["class_ids"]) + 1
        return [
            VistaPostTransformd(keys="pred"),  # no label_prompt: 0 background, 1..B the classes
            AsDiscreted(keys="pred", to_onehot=n),
            LayersToMultiHotd(keys="label", num_classes=n),  # overlapping segments: several layers
        ]

    def val_key_metric(self, context: Context):
        return {"val_mean_dice": MeanDice(output_transform=from_engine(["pred", "label"]), include_background=False)}

    # ------------------------------------------------------------------ saved labels
    def map_segments(self, segments: list[Segment]) -> dict[str, dict | None]:
        """What each segment of a saved label trains: a VISTA3D or learned class, else a new class."""
        found = vista3d_resolver(self.learned.get()).mapping(segments)
        return {name: answer or {"structure": name, "new": True} for name, answer in found.items()}

    # ------------------------------------------------------------------ publishing
    def _publish(self, context: Context) -> None:
        trained = self.checkpoint.trained_path
        if context.evaluator:
            best = os.path.join(context.output_dir, self._key_metric_filename)
            if not os.path.exists(best) or (os.path.exists(trained) and os.path.getmtime(best) <= os.path.getmtime(trained)):
                return
            state = load_state_dict(best)
        else:
            network = context.network.module if hasattr(context.network, "module") else context.network
            state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
        save_atomically(state, trained)  # weights first: a reader never meets a class its weights lack
        classes = {**self.learned.get(), **self._run["new_classes"]}
        write_learned_classes(self.classes_path, classes)
        logger.info(f"vista3d: published {trained}; learned classes {classes}")
