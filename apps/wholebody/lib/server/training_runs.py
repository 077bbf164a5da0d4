"""One training run at a time, and a task process that dies says why.

Stock MONAI Label refuses a second ``POST /train/{model}`` (429) only once the first run's process exists:
two requests close together both pass, and the second trains after the first. Here a run that is submitted
or running refuses the next with 429 naming it (what the Slicer module shows), unless the request asks to
``enqueue``. A task process (training, scoring, batch inference) that ends without success is ``ERROR``
in its status with ``reason``: the signal that killed it (the out-of-memory killer, ``kill -9``) or its
exit code and the last error line it printed.
"""

from __future__ import annotations

import re
import signal
import threading

from fastapi import HTTPException
from monailabel.endpoints import train
from monailabel.utils.async_tasks import utils as task_runner

METHODS = ("train", "scoring", "batch_infer")
ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b")


class _EndedProcesses(dict):
    """MONAI Label's table of a method's running task processes (task id -> Popen), which forgets a process
    when it ends; this one keeps it until its exit status has been reported."""

    def __init__(self):
        super().__init__()
        self.ended: dict[str, object] = {}

    def pop(self, task_id, *default):
        process = super().pop(task_id, *default)
        if process is not None:
            self.ended[task_id] = process
        return process


def reason(returncode: int, output_lines) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else f"signal {-returncode}"
        why = " (by the out-of-memory killer or kill -9)" if -returncode == signal.SIGKILL else ""
        return f"the task process was killed by {name}{why}"
    errors = [line for line in output_lines if ERROR_LINE.search(line)]
    return f"the task process exited with code {returncode}" + (f": {errors[-1]}" if errors else "")


def _reporting(task_func):
    def run(task, method, callback=None):
        task_func(task, method, callback)
        processes = task_runner.background_processes.get(method)
        process = processes.ended.pop(task["id"], None) if isinstance(processes, _EndedProcesses) else None
        if process is not None and task.get("status") == "ERROR":
            task["reason"] = reason(process.returncode, task.get("details") or [])

    return run


def install() -> None:
    for method in METHODS:
        if not task_runner.background_processes.get(method):
            task_runner.background_processes[method] = _EndedProcesses()
    # run_background_task looks _task_func up in its module on every call.
    task_runner._task_func = _reporting(task_runner._task_func)

    start = train.run_model
    starting = threading.Lock()

    def run_model(model: str, params=None, run_sync=False, enqueue=False):
        with starting:  # checked and submitted in one step
            busy = [t for t in task_runner.tasks("train") if t.get("status") in ("SUBMITTED", "RUNNING")]
            if busy and not enqueue:
                current = busy[0]
                raise HTTPException(
                    status_code=429,
                    detail=f"a training run is {current['status'].lower()} (model '{current['request'].get('model')}', "
                    f"started {current['start_ts']}); wait for it to end or stop it (DELETE /train/)",
                )
            return start(model, params, run_sync, enqueue)

    # The route handler looks run_model up in its module on every call.
    train.run_model = run_model
