"""MONAI Label's batch infer task (``POST /batch/infer/{model}``), per study.

Stock MONAI Label 0.8.5 divides by the number of GPUs with ``multi_gpu`` (its default) on a machine
without one (ZeroDivisionError before any study), ends a sequential batch at the first study that
fails and answers only ``{}`` for a failed study in a threaded one. Here every study runs as ``/infer``
would run it and saves its label under ``label_tag``; a study that fails is answered with its reason
and the batch goes on; the log ends with a summary (a background task keeps only its last 20 lines).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import torch
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.batch_infer import BatchInferTask, run_infer_task
from monailabel.utils.others.generic import name_to_device

from lib.batch.failures import failure_reason

logger = logging.getLogger(__name__)


class StudyBatchInfer(BatchInferTask):
    def __call__(self, request: dict[str, Any], datastore: Datastore, infer: Callable) -> dict[str, dict]:
        image_ids = sorted(self.get_images(request, datastore))
        if request.get("max_batch_size"):
            image_ids = image_ids[: request["max_batch_size"]]
        devices = self.devices(request)
        label_tag = str(getattr(request.get("label_tag"), "value", request.get("label_tag") or DefaultLabelTag.ORIGINAL.value))
        model = request.get("model")
        logger.info(f"batch infer {model}: {len(image_ids)} studies, label tag '{label_tag}', devices {devices}")

        def study(index: int, image_id: str) -> dict:
            req = {
                **request,
                "image": image_id,
                "save_label": True,
                "label_tag": label_tag,
                "logging": request.get("logging", "INFO"),
                "device": devices[index % len(devices)],
            }
            try:
                # MONAI Label's infer answers the tag "original" whatever tag it saved under.
                return {**run_infer_task(req, datastore, infer), "tag": label_tag}
            except Exception as e:  # one study's failure is its answer, not the batch's end
                logger.warning(f"batch infer {model}: {image_id} failed", exc_info=True)
                return {"error": failure_reason(e)}

        start = time.time()
        results: dict[str, dict] = {}
        workers = max(1, min(int(request.get("max_workers") or 1), len(image_ids) or 1))
        with ThreadPoolExecutor(workers, thread_name_prefix="batch-infer") as pool:
            futures = {image_id: pool.submit(study, i, image_id) for i, image_id in enumerate(image_ids)}
            for done, (image_id, future) in enumerate(futures.items(), start=1):
                results[image_id] = future.result()
                state = f"failed: {results[image_id]['error']}" if "error" in results[image_id] else "done"
                logger.info(f"batch infer {model}: {done}/{len(image_ids)} {image_id} {state}")

        failed = {i: r["error"] for i, r in results.items() if "error" in r}
        logger.info(
            f"batch infer {model} finished in {time.time() - start:.1f} s: {len(results) - len(failed)} done, "
            f"{len(failed)} failed" + (f" ({'; '.join(f'{i}: {e}' for i, e in failed.items())})" if failed else "")
        )
        return results

    @staticmethod
    def devices(request: dict[str, Any]) -> list[str]:
        """``multi_gpu``: one GPU per study in turn (``gpus``: "all" or "0,2"); without GPUs, ``device``."""
        if request.get("multi_gpu", True) and torch.cuda.is_available():
            gpus = request.get("gpus", "all")
            ids = range(torch.cuda.device_count()) if gpus in (None, "", "all") else str(gpus).split(",")
            return [f"cuda:{str(i).strip()}" for i in ids]
        return [name_to_device(request.get("device", "cuda"))]
