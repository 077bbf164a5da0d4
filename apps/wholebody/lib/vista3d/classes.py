"""VISTA3D class names the app knows: the published table, classes learned by finetuning, and the
mapping from a saved label's values to global class ids.

Pure Python (no torch), like ``lib.vista3d.prompts``: the infer tasks read the learned classes on every
request and the trainer computes its label mapping before any image is read.

Learned classes live in ``<model_dir>/vista3d_classes.json`` (``{"name": id, ...}``, ids 133..254), written
by the trainer next to the finetuned checkpoint and after it, so a reader never sees a class that the
weights it loads do not know.
"""

from __future__ import annotations

import json
import os
import threading
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from lib.datastore.atomic import write_json_atomically
from lib.labels.names import BACKGROUND, NameResolver, name_key
from lib.labels.saved import Segment
from lib.vista3d.prompts import CLASSES, FIRST_NEW_CLASS_ID, LAST_NEW_CLASS_ID, PromptError

__all__ = [
    "LearnedClasses",
    "class_id_for_name",
    "vista3d_resolver",
    "table_labels",
    "label_mapping_for",
    "parse_label_mapping",
    "write_learned_classes",
]


def table_labels() -> dict[str, int]:
    """The published class table, name -> id, without background."""
    return {name: cid for cid, name in sorted(CLASSES.items()) if cid > 0}


@lru_cache(maxsize=8)
def _resolver(extra: frozenset) -> NameResolver:
    return NameResolver({**table_labels(), **dict(extra)})


def vista3d_resolver(extra_classes: Mapping[str, int] | None = None) -> NameResolver:
    """Names of other tools -> VISTA3D global ids: the published table and the learned classes."""
    return _resolver(frozenset((str(k), int(v)) for k, v in (extra_classes or {}).items()))


def class_id_for_name(name: Any, extra_classes: Mapping[str, int] | None = None) -> int | None:
    """Global id of a segment name, or None for a name VISTA3D does not know (``lib.labels.names``:
    ``kidney_left``, ``Kidney (left)`` and ``left kidney`` are all 14)."""
    if name is None or not str(name).strip():
        return None
    return vista3d_resolver(extra_classes).channel(str(name))


def _as_pairs(value: Any) -> list[list]:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise PromptError(f"label_mapping must be JSON like [[1, 1], [2, 133]], got {value!r}") from None
    if isinstance(value, Mapping):
        value = [[k, v] for k, v in value.items()]
    if not isinstance(value, (list, tuple)):
        raise PromptError(f"label_mapping must be a list of [local, global] pairs, got {value!r}")
    return [list(p) if isinstance(p, (list, tuple)) else [p] for p in value]


def parse_label_mapping(value: Any) -> list[tuple[int, int]] | None:
    """``[[local, global], ...]`` (a list or its JSON text; a ``{local: global}`` dict too) -> checked
    pairs, or None when empty. Globals: an id of the table (1..132) or a new id (133..254)."""
    if value is None:
        return None
    pairs = _as_pairs(value)
    if not pairs:
        return None
    out: list[tuple[int, int]] = []
    seen: dict[int, int] = {}
    for pair in pairs:
        if len(pair) != 2:
            raise PromptError(f"label_mapping entry {pair!r} must be [local value, global id]")
        try:
            local, glob = (int(str(v).strip()) for v in pair)
        except ValueError:
            raise PromptError(f"label_mapping entry {pair!r} must hold two integers") from None
        if not 1 <= local <= 255:
            raise PromptError(f"label_mapping entry {pair!r}: local value must be 1..255 (0 is unlabelled)")
        if not (glob in CLASSES and glob > 0) and not FIRST_NEW_CLASS_ID <= glob <= LAST_NEW_CLASS_ID:
            raise PromptError(
                f"label_mapping entry {pair!r}: global id must be a VISTA3D class (1..132) or a new class "
                f"({FIRST_NEW_CLASS_ID}..{LAST_NEW_CLASS_ID})"
            )
        if local in seen and seen[local] != glob:
            raise PromptError(f"label_mapping maps local value {local} twice ({seen[local]} and {glob})")
        seen[local] = glob
        out.append((local, glob))
    return sorted(set(out))


def label_mapping_for(
    segments: Sequence[Segment],
    learned: Mapping[str, int],
    explicit: Sequence[tuple[int, int]] | None = None,
    reserved: Iterable[int] = (),
) -> tuple[list[tuple[int, int, int]], dict[str, int]]:
    """Map one saved label's values to global ids.

    Args:
        segments: the saved label's segments (``lib.labels.saved``: name, value, layer, code).
        learned: classes already learned (name -> id), reused by name.
        explicit: ``label_mapping`` from the request/config; when given it decides the ids (for the
            values of every layer), and the segment names only name new ids.
        reserved: new ids already given to other names in this training run.
    Returns:
        ``[(local, global, layer), ...]`` (layer -1: every layer) and the new classes it introduces
        (name -> id in 133..254).
    """
    taken = set(learned.values()) | set(reserved)
    new: dict[str, int] = {}
    learned_by_id = {int(v): k for k, v in learned.items()}

    def fresh_id() -> int:
        for cid in range(FIRST_NEW_CLASS_ID, LAST_NEW_CLASS_ID + 1):
            if cid not in taken:
                taken.add(cid)
                return cid
        raise PromptError(f"no free class id left in {FIRST_NEW_CLASS_ID}..{LAST_NEW_CLASS_ID}")

    if explicit:
        names_by_value = {s.value: s.name for s in segments if s.layer == 0}
        for local, glob in explicit:
            if glob >= FIRST_NEW_CLASS_ID and glob not in learned_by_id:
                name = names_by_value.get(local)
                if not name or vista3d_resolver({**learned, **new}).channel(name) is not None:
                    name = f"class {glob}"
                if glob not in new.values():
                    new[name] = glob
        return [(local, glob, -1) for local, glob in explicit], new

    mapping: list[tuple[int, int, int]] = []
    for segment in sorted(segments, key=lambda s: (s.layer, s.value)):
        if segment.value <= 0 or name_key(segment.name) == BACKGROUND:
            continue
        cid = vista3d_resolver({**learned, **new}).channel(segment.name, segment.code)
        if cid is None:
            cid = fresh_id()
            new[segment.name] = cid
        mapping.append((segment.value, cid, segment.layer))
    return mapping, new


class LearnedClasses:
    """``<model_dir>/vista3d_classes.json``, re-read when its mtime changes."""

    def __init__(self, path: str):
        self.path = path
        self._stamp: tuple | None = None
        self._classes: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self) -> dict[str, int]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                with open(self.path, encoding="utf-8") as f:
                    raw = json.load(f)
                self._classes = {str(k): int(v) for k, v in raw.items()}
                self._stamp = stamp
            return dict(self._classes)


def write_learned_classes(path: str, classes: Mapping[str, int]) -> None:
    """Atomically: a reader never sees a half-written file."""
    write_json_atomically(path, dict(sorted(classes.items(), key=lambda kv: kv[1])), indent=1)
