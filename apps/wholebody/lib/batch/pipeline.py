"""Batch segmentation on Ray Data: studies stream through stages that scale independently.

    fetch (DICOMweb only; I/O tasks) -> preprocessing (CPU tasks) -> network (actors that load the
    checkpoint once: one per GPU, or N CPU actors) -> inversion + writing + measurements (CPU tasks) ->
    SEG + measurement report (SR) + optionally RTSTRUCT, STOW back to the PACS (``to_pacs``; I/O tasks)

Every stage is a Ray Data ``map`` over one row per study. A row carries the study, its stage timings, a
failure reason once a stage failed (later stages pass it on untouched, so one bad study never stops the
run) and the payload between two stages (pickled: the preprocessed image with its applied operations,
then the labels with what the inversion needs). The stages reserve different resources, which also
keeps Ray Data from fusing preprocessing into the network actors. The driver writes the manifest and
prints progress as rows come back, in the order they finish, and ends with the cohort table
(``lib.batch.cohort``: one row per study and structure, measured where the label is written).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

from lib.batch import cohort
from lib.batch.failures import failure_reason
from lib.batch.manifest import Manifest
from lib.batch.model import BatchError, ModelRun
from lib.batch.progress import Progress
from lib.batch.sources import Study
from lib.pipelines.wholebody import CPU_PRECISION

logger = logging.getLogger(__name__)

APP_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB_DIR = os.path.join(APP_DIR, "lib")
LABELS_DIR = "labels"
# Logical CPUs a task reserves: a fetch or a STOW mostly waits on the network; preprocessing and
# writing are one thread each, two to a core while the network actors hold theirs.
IO_TASK_CPUS = 0.25
CPU_TASK_CPUS = 0.5
# Failures while talking to the PACS: a rerun tries these studies again.
TRANSIENT_STAGES = ("fetch", "pacs")
PACS_LABEL_TAG = "original"  # a model's output: stored as AUTOMATIC, never taken for a training label


@dataclass(frozen=True)
class Resources:
    """Where the run goes: a local Ray (``address`` None) with ``cpus`` and ``object_store_mb``, or an
    existing cluster; ``actors`` network actors (default one per GPU, else 1), each reserving
    ``actor_cpus`` and running torch on ``actor_threads`` threads (see ``threads``)."""

    address: str | None = None
    cpus: int | None = None
    object_store_mb: int | None = None
    device: str = "auto"
    actors: int | None = None
    actor_cpus: int = 1
    actor_threads: int | None = None

    def threads(self, actors: int) -> int:
        """torch threads of a network actor (and of preprocessing). Sums, hence near-tied labels, follow it:
        on the local Ray the default shares the threads ``/infer`` uses on this machine among the actors
        (one actor: the server's labels to the voxel); on a cluster, ``actor_cpus``."""
        if self.actor_threads:
            return self.actor_threads
        if self.address:
            return self.actor_cpus
        import torch

        return max(self.actor_cpus, torch.get_num_threads() // actors)


def run(
    source,
    out_dir: str,
    model_dir: str,
    highres: bool,
    resources: Resources = Resources(),
    checkpoint: str | None = None,
    to_pacs: bool = False,
    rtstruct: bool = False,
    overlap: float | None = None,
    channels_last: bool = True,
    precision: str = CPU_PRECISION,
    skip_air: bool = False,
    retry_failed: bool = False,
    echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Segments every study of ``source`` not yet settled with the same checkpoint and params (see
    Manifest.settled); returns the run's summary (counts, seconds per stage, studies per hour)."""
    if to_pacs and not source.remote:
        raise BatchError("--to-pacs needs DICOMweb studies (--studies http(s)://.../dicom-web)")
    if rtstruct and not to_pacs:
        raise BatchError("--rtstruct stores RT Structure Sets in the PACS: it needs --to-pacs")
    os.makedirs(out_dir, exist_ok=True)
    start = time.monotonic()
    ray = _Ray(resources)
    try:
        params = {"channels_last": channels_last, "device": ray.device(), "precision": precision, "skip_air": skip_air}
        params.update({"overlap": overlap} if overlap is not None else {})
        model = ModelRun.create(model_dir, highres, checkpoint, **params)
        manifest = Manifest(out_dir)
        studies = {s.id: s for s in source.studies()}
        settled = manifest.settled(model.key, {s.id: s.version for s in studies.values()}, retry_failed)
        todo = [s for s in studies.values() if s.id not in settled]
        manifest.start_run(model.key, model.params(), studies=source.describe(), todo=len(todo), skipped=len(settled))
        echo(f"{len(studies)} studies in {source.describe()}: {len(settled)} settled before, {len(todo)} to do")

        progress = Progress(len(todo), skipped=len(settled))
        stage_seconds: dict[str, float] = {}
        if todo:
            for row in _dataset(ray.connect(), todo, source, out_dir, model, resources, to_pacs, rtstruct).iter_rows():
                timings = json.loads(row["timings"])
                for stage, seconds in timings.items():
                    stage_seconds[stage] = stage_seconds.get(stage, 0.0) + seconds
                study = studies[row["study"]]
                if row["error"]:
                    retry = row["failed_stage"] in TRANSIENT_STAGES
                    manifest.record(study.id, model.key, "failed", version=study.version, reason=row["error"], retry=retry, seconds=timings)
                    echo(progress.update(study.id, row["error"]))
                else:
                    result = pickle.loads(row["payload"])
                    manifest.record(study.id, model.key, "done", version=study.version, seconds=timings, **result)
                    echo(progress.update(study.id))
        table = cohort.assemble(out_dir, {study: r["measurements"] for study, r in manifest.done().items() if "measurements" in r})
        wall = time.monotonic() - start
        summary = {
            "studies": len(studies),
            "skipped": len(settled),
            "done": progress.done,
            "failed": progress.failed,
            "wall_seconds": round(wall, 2),
            "studies_per_hour": round(3600.0 * progress.finished / wall, 2) if progress.finished else 0.0,
            "stage_seconds": {k: round(v, 2) for k, v in stage_seconds.items()},
            "key": model.key,
            "measurements": os.path.relpath(table, out_dir),
        }
        echo(f"finished: {json.dumps(summary)}")
        return summary
    finally:
        ray.close()


# ----------------------------------------------------------------------------- Ray
class _Ray:
    """Ray on this machine (started only when there is work; no dashboard, no usage stats, its files in
    a temp dir, the app's ``lib`` on the workers' path), or the cluster at ``resources.address``
    (``lib`` shipped to it)."""

    def __init__(self, resources: Resources):
        self.resources = resources
        self._ray = None
        self._temp_dir: str | None = None

    def device(self) -> str:
        """``cuda`` when asked, or for ``auto`` when there are GPUs (this machine's, or the cluster's)."""
        if self.resources.device == "cpu":
            return "cpu"
        gpus = self._gpus()
        if self.resources.device == "cuda" and not gpus:
            raise BatchError("--device cuda: no GPU " + ("in the Ray cluster" if self.resources.address else "on this machine"))
        return "cuda" if gpus else "cpu"

    def _gpus(self) -> int:
        if self.resources.address:
            return int(self.connect().cluster_resources().get("GPU", 0))
        import torch

        return torch.cuda.device_count()

    def connect(self):
        if self._ray is not None:
            return self._ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        if self.resources.address:
            ray.init(address=self.resources.address, runtime_env={"py_modules": [LIB_DIR]}, logging_level=logging.WARNING)
        else:
            # Ray's socket paths must stay short: a temp dir of its own, not one under the output.
            self._temp_dir = tempfile.mkdtemp(prefix="ray-batch-")
            mb = self.resources.object_store_mb
            ray.init(
                num_cpus=self.resources.cpus,
                object_store_memory=mb * 2**20 if mb else None,
                include_dashboard=False,
                _temp_dir=self._temp_dir,
                runtime_env={"env_vars": {"PYTHONPATH": APP_DIR}},
                logging_level=logging.WARNING,
            )
        self._ray = ray
        return ray

    def close(self) -> None:
        if self._ray is not None:
            self._ray.shutdown()  # on a cluster: only this driver leaves
            self._ray = None
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)


def _dataset(ray, todo: list[Study], source, out_dir: str, model: ModelRun, resources: Resources, to_pacs: bool, rtstruct: bool):
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines; progress is ours
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver prints one line per study instead
    context.enable_auto_log_stats = False
    # Its advice to reserve memory per task repeats every 30 s; stage memory is bounded by design
    # (one study per task, one per actor) and the run's peak is measured by bench/bench_batch.py.
    context.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = resources.actors or (gpus if model.device == "cuda" else 1)

    rows = [{"study": s.id, "image": s.image, "error": "", "failed_stage": "", "timings": "{}", "payload": pickle.dumps(s.source)} for s in todo]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    if source.remote:
        dataset = dataset.map(_Stage("fetch", _fetch, source), num_cpus=IO_TASK_CPUS)
    threads = resources.threads(actors)
    dataset = dataset.map(_Stage("preprocess", _preprocess, (model, threads)), num_cpus=CPU_TASK_CPUS)
    dataset = dataset.map(
        _NetworkStage,
        fn_constructor_kwargs={"model": model, "threads": threads},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=resources.actor_cpus,
        num_gpus=1 if model.device == "cuda" else 0,
    )
    dataset = dataset.map(_Stage("write", _invert_and_write, (out_dir, model)), num_cpus=CPU_TASK_CPUS)
    if to_pacs:
        dataset = dataset.map(_Stage("pacs", _store_seg, (source, out_dir, rtstruct)), num_cpus=IO_TASK_CPUS)
    return dataset


# ----------------------------------------------------------------------------- stages on rows
class _Stage:
    """``work(row, payload, context) -> payload`` as a Ray Data row function: timed, and a failure becomes
    the row's reason (the heavy payload is dropped) instead of the run's end."""

    def __init__(self, name: str, work: Callable, context: Any = None):
        self.name, self.work, self.context = name, work, context

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["error"]:
            return row
        start = time.perf_counter()
        try:
            row["payload"] = pickle.dumps(self.work(row, pickle.loads(row["payload"]), self.context), protocol=5)
        except Exception as e:  # the study's failure, recorded with its reason; the run goes on
            row["error"], row["failed_stage"], row["payload"] = f"{self.name}: {failure_reason(e)}", self.name, b""
            logger.warning(f"{row['study']}: {row['error']}")
            logger.debug(f"{row['study']}: {self.name} failed", exc_info=True)
        timings = json.loads(row["timings"])
        timings[self.name] = round(time.perf_counter() - start, 3)
        row["timings"] = json.dumps(timings)
        return row


class _NetworkStage(_Stage):
    """A Ray actor: the checkpoint is loaded once, then studies run through it one after another."""

    def __init__(self, model: ModelRun, threads: int):
        from lib.batch.stages import Network

        network = Network(model, threads)
        super().__init__("network", lambda row, image, _: network(image))


def _fetch(row, series_uid: str, source) -> str:
    row["image"] = source.fetch(series_uid)
    return row["image"]


def _preprocess(row, path: str, context):
    from lib.batch.stages import preprocess

    model, threads = context
    return preprocess(path, model, threads)


def _invert_and_write(row, inferred: dict, context) -> dict[str, str]:
    """The label file and the study's rows of the cohort table (measured on the input's grid, as /infer does)."""
    from lib.batch.stages import LABEL_EXTENSION, invert_and_write
    from lib.labels import wholebody_labels
    from lib.measurements.on_image import measure_on_image

    out_dir, model = context
    label = os.path.join(LABELS_DIR, f"{row['study']}{LABEL_EXTENSION}")
    labels = invert_and_write(inferred, os.path.join(out_dir, label), model)
    names = {value: name for name, value in wholebody_labels().items()}
    measurements = cohort.write_study(out_dir, row["study"], measure_on_image(labels, row["image"], names))
    return {"label": label, "measurements": measurements}


def _store_seg(row, written: dict, context) -> dict[str, Any]:
    from lib.labels import wholebody_labels

    source, out_dir, rtstruct = context
    names = {value: name for name, value in wholebody_labels().items()}
    pacs = source.store_seg(row["study"], row["image"], os.path.join(out_dir, written["label"]), names, PACS_LABEL_TAG, rtstruct)
    return {**written, "pacs": pacs}
