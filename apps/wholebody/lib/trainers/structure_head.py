"""``wholebody_structures``: learns structures that are not among the 104 (a tumour, a vessel, a lymph
node station) from saved labels, as a new decoder head on the frozen encoder of the current
``wholebody`` model (lib/heads/). The base checkpoint is only read, so the 104 outputs stay
bit-identical; the head is published to ``<model_dir>/wholebody_heads/<res>/<head>.pt`` after each
epoch that improves validation Dice, and ``wholebody`` merges it from its next request on.

Request parameters: ``structures`` (segment names, a list or comma-separated; default every saved
segment name that is not one of the 104 nor in another head), ``head`` (its name; default the
structures' names; training an existing head again replaces it), ``highres``, ``max_epochs``,
``val_split``, ``learning_rate``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

import torch

from lib.conf import as_bool
from lib.heads.network import HeadTrainingNetwork, StructureHead, encoder_fingerprint
from lib.heads.store import HeadError, HeadRecord, HeadStore, check_head_name
from lib.labels.names import BACKGROUND, NameResolver, name_key
from lib.labels.saved import Segment, saved_segments
from lib.trainers import params
from lib.trainers.wholebody import WholeBodySegmentation
from lib.weights.checkpoints import load_state_dict

logger = logging.getLogger(__name__)


class StructureHeadTrainer(WholeBodySegmentation):
    request_params = {
        **WholeBodySegmentation.request_params,
        "structures": params.names,
        "head": params.text,
        "learning_rate": params.number(0.0, 1.0),
    }

    def __init__(self, heads: HeadStore, **wholebody_trainer_args):
        """``heads``: where heads are published; the rest as for the ``wholebody`` trainer."""
        super().__init__(**wholebody_trainer_args)
        self._description = "Learn new structures as a decoder head on the frozen 104-structure encoder"
        self._config.update({"structures": "", "head": "", "learning_rate": 1e-3})
        self.base_labels = dict(self._channels)
        self.head_store = heads
        self._run: dict[str, Any] = {}

    # ------------------------------------------------------------------ request
    def plan(self, request: dict, datastore) -> dict[str, Any]:
        """What a request would train, checked before any work (the server calls it to answer 4xx):
        head name, resolution, structures with their label values, the saved labels holding them.
        Names are matched as ``lib.labels.names`` resolves them: a "new" structure that is one of
        the 104 (``left kidney`` is ``kidney_left``) or of another head is refused."""
        req = {**self._config, **request}
        highres = as_bool(req["highres"], "highres")
        saved = self._saved_segments(datastore)
        own = check_head_name(req["head"]) if req.get("head") else None
        others = NameResolver({s: 1 for r in self.head_store.heads(highres) if r.name != own for s in r.structures})
        wanted = req.get("structures") or []
        if isinstance(wanted, str):
            wanted = [w for w in wanted.split(",")]
        wanted = [w.strip() for w in wanted if isinstance(w, str) and w.strip()]
        if wanted:
            self._refuse_known(wanted, others)
        else:
            present = [s for segments in saved.values() for s in segments]
            new = self._new_structures(present, others).values()
            wanted = sorted({target["structure"] for target in new if target and target.get("new")})
        found = {w: [i for i, segments in saved.items() if any(NameResolver({w: 1}).mapping(segments).values())] for w in wanted}
        missing = [w for w, images in found.items() if not images]
        if missing:
            names = sorted({s.name for segments in saved.values() for s in segments})
            raise HeadError(f"no saved label has a segment named {missing}; saved segment names: {names}")
        name = check_head_name(req.get("head") or re.sub(r"[^A-Za-z0-9_-]+", "_", "_".join(wanted)).strip("_-")[:64] or "head")
        values = self.head_store.allocate(name, highres, wanted, self.base_labels)
        existing = self.head_store.get(name, highres)
        images = sorted({i for images in found.values() for i in images})
        # Retraining keeps the head's place in the merge order.
        created = existing.created if existing else HeadStore.now()
        return {"head": name, "highres": highres, "structures": values, "images": images, "created": created}

    def _refuse_known(self, wanted: list[str], others: NameResolver) -> None:
        base = NameResolver(self.base_labels)
        for name in wanted:
            known = base.resolve(name)
            if known:
                raise HeadError(
                    f"'{name}' is '{known.structure}', one of the structures of the 104-class model, not a new one: "
                    "train 'wholebody' to improve it"
                )
            other = others.resolve(name)
            if other:
                raise HeadError(f"'{name}' is '{other.structure}' of another head: train that head again or remove it first")

    def _new_structures(self, segments: list[Segment], others: NameResolver | None = None) -> dict[str, dict | None]:
        """Segment name -> {structure: its name, new: True} for a segment this trainer would learn as a
        new structure (its first spelling), {structure} of the head that has it, or None (one of the
        104, background)."""
        base = NameResolver(self.base_labels)
        heads = others or NameResolver({s: 1 for r in self.head_store.heads() for s in r.structures})
        answers: dict[str, dict | None] = {}
        by_key: dict[str, dict | None] = {BACKGROUND: None}
        for segment in segments:
            key = name_key(segment.name)
            if key not in by_key:
                head = heads.resolve(segment.name, segment.code)
                if base.resolve(segment.name, segment.code):
                    by_key[key] = None
                else:
                    by_key[key] = {"structure": head.structure} if head else {"structure": segment.name, "new": True}
            answers[segment.name] = by_key[key]
        return answers

    def map_segments(self, segments: list[Segment]) -> dict[str, dict | None]:
        return self._new_structures(segments)

    @staticmethod
    def _saved_segments(datastore) -> dict[str, list[Segment]]:
        return {i: saved_segments(datastore.get_label_info(i, "final") or {}) for i in datastore.get_labeled_images()}

    def __call__(self, request, datastore):
        request = self.checked_params({**self._config, **request})
        run = self.plan(request, datastore)
        self._run = {**run, "learning_rate": request["learning_rate"], "started": time.time()}
        # The head's channels: background, then its structures in order (PartialLabelsd maps names to them).
        self._channels = {s: i + 1 for i, s in enumerate(run["structures"])}
        self.num_classes = 1 + len(run["structures"])
        logger.info(f"wholebody_structures: head '{run['head']}' learns {run['structures']} from {run['images']}")
        request = {**request, "highres": run["highres"]}
        return super().__call__(request, datastore)

    def run_name(self) -> str:
        return f"head_{self._run['head']}_{'highres' if self._run['highres'] else 'lowres'}"

    def pre_process(self, request, datastore):
        return [item for item in super().pre_process(request, datastore) if item["image_id"] in self._run["images"]]

    # ------------------------------------------------------------------ model
    def network(self, context):
        base = super().network(context)  # seeded, as the infer task's untrained network
        if os.path.exists(self._start_from):
            base.load_state_dict(load_state_dict(self._start_from), strict=True)
        self._run["encoder"] = encoder_fingerprint(base.state_dict())
        self._run["base_checkpoint"] = os.path.basename(self._start_from) if os.path.exists(self._start_from) else "untrained"
        head = StructureHead.from_base(self._network_factory, base, len(self._run["structures"]))
        return HeadTrainingNetwork(base, head)

    def load_path(self, output_dir, pretrained=True):
        return None  # network() reads the base checkpoint; the head starts from the base decoder

    def optimizer(self, context):
        head = context.network.module.head if hasattr(context.network, "module") else context.network.head
        return torch.optim.AdamW(head.parameters(), lr=self._run["learning_rate"], weight_decay=1e-5)

    # ------------------------------------------------------------------ publishing
    def _publish(self, context) -> None:
        best = os.path.join(context.output_dir, self._key_metric_filename)
        if not os.path.exists(best) or os.path.getmtime(best) <= self._run["started"]:
            return  # nothing better than before this run (an older run's file is not this head)
        self._run["started"] = os.path.getmtime(best)
        state = {k[len("head."):]: v for k, v in load_state_dict(best).items() if k.startswith("head.")}
        metric = getattr(context.evaluator.state, "best_metric", None) if context.evaluator else None
        record = HeadRecord(
            name=self._run["head"],
            highres=self._run["highres"],
            structures=self._run["structures"],
            encoder=self._run["encoder"],
            base_checkpoint=self._run["base_checkpoint"],
            created=self._run["created"],
            metrics={"val_mean_dice": float(metric)} if metric is not None else {},
        )
        self.head_store.save(record, state)
        logger.info(f"wholebody_structures: published head '{record.name}' {record.structures} -> {record.weights}")

