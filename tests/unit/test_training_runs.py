"""Why a task process (training, scoring, batch) ended without success, as /train/ reports it."""

from __future__ import annotations

from lib.server.training_runs import reason


def test_a_killed_process_names_the_signal():
    assert reason(-9, ["epoch 3/50"]) == "the task process was killed by SIGKILL (by the out-of-memory killer or kill -9)"
    assert reason(-15, []) == "the task process was killed by SIGTERM"


def test_a_failed_process_gives_its_exit_code_and_last_error_line():
    output = ["Traceback (most recent call last):", "ValueError: first", "  File x", "RuntimeError: CUDA out of memory", "exit"]
    assert reason(1, output) == "the task process exited with code 1: RuntimeError: CUDA out of memory"
    assert reason(2, ["no error printed"]) == "the task process exited with code 2"
