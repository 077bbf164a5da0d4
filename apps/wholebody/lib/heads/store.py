"""Decoder heads on disk: ``<model_dir>/wholebody_heads/<highres|lowres>/<name>.pt`` (weights) and
``<name>.json`` (what the head adds). The JSON is written after the weights, so a head exists once
its JSON does and a reader never meets a name without weights.

Label values of new structures are allocated once, above the 104 (105, 106, ...), across both
resolutions, and never reused while a head holds them: a saved label keeps its meaning when
other heads are added or removed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
from dataclasses import dataclass, field
from typing import Iterable

import torch

from lib.conf import ConfError, NothingToTrainError
from lib.datastore.atomic import write_json_atomically
from lib.server.errors import NotFoundError, shown
from lib.weights.checkpoints import save_atomically

HEAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
RESOLUTIONS = {True: "highres", False: "lowres"}
MAX_LABEL = 255  # results are uint8


class HeadError(ConfError):
    """A head request that cannot be carried out as given (answered with 422, as every ConfError)."""


class NoNewStructureError(HeadError, NothingToTrainError):
    """No structure that is not one of the 104: ``POST /train/`` (every trainer) leaves the head trainer out."""


@dataclass
class HeadRecord:
    name: str
    highres: bool
    structures: dict[str, int]  # name -> label value in the merged map
    encoder: str  # encoder_fingerprint of the base it was trained on
    base_checkpoint: str
    created: str
    metrics: dict = field(default_factory=dict)
    weights: str = ""
    json_path: str = ""

    def describe(self, current_encoder: str | None = None) -> dict:
        answer = {
            "name": self.name,
            "resolution": RESOLUTIONS[self.highres],
            "structures": self.structures,
            "base_checkpoint": self.base_checkpoint,
            "created": self.created,
            "metrics": self.metrics,
        }
        if current_encoder is not None:
            answer["stale"] = current_encoder != self.encoder
        return answer


def check_head_name(name: str) -> str:
    if not isinstance(name, str) or not HEAD_NAME.match(name):
        raise HeadError(f"invalid head name {shown(name)}: letters, digits, '_' or '-', at most 64, no path separators")
    return name


class HeadStore:
    def __init__(self, root: str):
        self.root = root

    def folder(self, highres: bool) -> str:
        return os.path.join(self.root, RESOLUTIONS[highres])

    def heads(self, highres: bool | None = None) -> list[HeadRecord]:
        """Heads in creation order (the order they are merged in: a later head wins a tie with an earlier one)."""
        records = []
        for res in (True, False) if highres is None else (highres,):
            folder = self.folder(res)
            for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                if entry.endswith(".json"):
                    try:
                        records.append(self._read(os.path.join(folder, entry), res))
                    except FileNotFoundError:  # removed since the listing (DELETE /heads/...)
                        continue
        return sorted(records, key=lambda r: (r.created, r.name))

    def _read(self, json_path: str, highres: bool) -> HeadRecord:
        with open(json_path) as f:
            meta = json.load(f)
        return HeadRecord(
            **{k: meta[k] for k in ("name", "structures", "encoder", "base_checkpoint", "created")},
            highres=highres,
            metrics=meta.get("metrics", {}),
            weights=json_path[: -len(".json")] + ".pt",
            json_path=json_path,
        )

    def get(self, name: str, highres: bool) -> HeadRecord | None:
        return next((r for r in self.heads(highres) if r.name == name), None)

    def labels(self, highres: bool | None = None) -> dict[str, int]:
        return {s: v for r in self.heads(highres) for s, v in r.structures.items()}

    def allocate(self, name: str, highres: bool, structures: Iterable[str], base_names: Iterable[str]) -> dict[str, int]:
        """Label values for a head about to be trained: its own earlier values are kept, new ones go
        above every value in use. A structure of the 104 or of another head of this resolution is refused."""
        structures = list(dict.fromkeys(structures))
        if not structures:
            raise NoNewStructureError("no new structure to learn: name at least one segment that is not one of the 104")
        base = {n.lower() for n in base_names}
        clash = [s for s in structures if s.lower() in base]
        if clash:
            raise HeadError(f"{clash} are structures of the 104-class model, not new ones; train 'wholebody' to improve them")
        for other in self.heads(highres):
            taken = [s for s in structures if s in other.structures and other.name != name]
            if taken:
                raise HeadError(f"{taken} already belong to head '{other.name}': train that head again or remove it first")
        own = self.get(name, highres)
        previous = own.structures if own else {}
        used = [v for r in self.heads() for v in r.structures.values()]
        next_value = max([len(base), *used]) + 1
        values = {}
        for structure in structures:
            if structure in previous:
                values[structure] = previous[structure]
            else:
                values[structure], next_value = next_value, next_value + 1
        if max(values.values()) > MAX_LABEL:
            raise HeadError(f"no label value left for {structures}: results are uint8 (at most {MAX_LABEL}); remove a head")
        return values

    def save(self, record: HeadRecord, state_dict: dict[str, torch.Tensor]) -> HeadRecord:
        folder = self.folder(record.highres)
        record.weights = os.path.join(folder, f"{record.name}.pt")
        record.json_path = os.path.join(folder, f"{record.name}.json")
        save_atomically(state_dict, record.weights)
        meta = {k: getattr(record, k) for k in ("name", "structures", "encoder", "base_checkpoint", "created", "metrics")}
        write_json_atomically(record.json_path, meta, indent=2)
        return record

    def remove(self, name: str, highres: bool | None = None) -> list[HeadRecord]:
        check_head_name(name)
        removed = [r for r in self.heads(highres) if r.name == name]
        if not removed:
            raise NotFoundError(f"no head '{name}'; heads: {', '.join(sorted({r.name for r in self.heads()})) or 'none'}")
        for record in removed:
            # The JSON first: from here on no reader uses the head. A concurrent DELETE may have removed either.
            with contextlib.suppress(FileNotFoundError):
                os.remove(record.json_path)
            with contextlib.suppress(FileNotFoundError):
                os.remove(record.weights)
        return removed

    @staticmethod
    def now() -> str:
        return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
