"""What built-in accounts cost a 3D Slicer session: the same requests against two servers, one
without accounts (127.0.0.1) and one with them, driven by the Slicer module's own client.

With accounts, the Slicer module does before every action what ``tests/accounts.py``'s
``SlicerLogin`` does: ``GET /auth/``, ``GET /auth/token/valid``, then the request with its bearer
token (signing in only once). The script measures, per action, the median of:

- ``off``: the request on the server without accounts;
- ``on, request``: the same request with a bearer token (the access check alone);
- ``on, as Slicer``: the request plus Slicer's two checks before it (what a user waits for).

Within a round the three take turns at going first, so that machine load falls on all alike. It
prints the medians in ms and the ratios against ``off`` from this one run, and the cost of the
check itself in this process (decode and verify the token, re-check the users file, find the
route's rule).

    $V/bin/python bench/bench_accounts.py                 # 20 rounds; inference in 3 of them
    $V/bin/python bench/bench_accounts.py --rounds 50 --out bench/results/accounts-vm-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "apps" / "wholebody")]

from accounts import AccountsServer, SlicerLogin, add_user  # noqa: E402

from conftest import CT, Server, free_port, slicer_client_class  # noqa: E402
from lib.networks import wholebody_segresnet  # noqa: E402
from lib.server.auth.access import SignedIn  # noqa: E402
from lib.server.auth.rules import rule_for  # noqa: E402
from lib.server.auth.tokens import Tokens  # noqa: E402
from lib.server.auth.users import Accounts  # noqa: E402

SLICER = {"result_extension": ".nrrd", "result_dtype": "uint8"}
PASSWORD = "bench-password"


def setup(folder: Path) -> tuple[Path, Path]:
    studies, model_dir = folder / "studies", folder / "model"
    studies.mkdir(parents=True)
    nib.save(nib.load(CT).slicer[20:84, 20:84, :], studies / "crop.nii.gz")
    official = model_dir / "wholeBody_ct_segmentation" / "models" / "model_lowres.pt"
    official.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(wholebody_segresnet().state_dict(), official)
    return studies, model_dir


def actions(label_file: str) -> dict:
    """name -> call on a client: the requests of an annotator's session."""
    return {
        "info": lambda c: c.info(),
        "datastore": lambda c: c.datastore(),
        "next_sample": lambda c: c.next_sample("first", {}),
        "infer": lambda c: c.infer("wholebody", "crop", SLICER),
        "save_label": lambda c: c.save_label("crop", label_file, params={"label_info": [{"name": "liver", "idx": 5}]}),
    }


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000.0


def check_alone_us(users_file: Path, repeats: int = 20_000) -> float:
    """Microseconds per request of what the access check adds, in this process."""
    signed_in = SignedIn(Accounts(str(users_file)), Tokens(b"k" * 48, 60))
    token = signed_in.tokens.issue(signed_in.accounts.get("anna"))
    start = time.perf_counter()
    for _ in range(repeats):
        signed_in.account(token)
        rule_for("PUT", "/datastore/label")
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--infer-rounds", type=int, default=3, help="rounds that also run inference (seconds each on CPU)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_accounts_"))
    servers = []
    try:
        conf = {"models": "wholebody", "highres": "false", "weights_url": f"http://127.0.0.1:{free_port()}/"}
        studies, model_dir = setup(tmp / "off")
        servers.append(Server(studies, model_dir, conf, tmp / "off.log"))
        studies, model_dir = setup(tmp / "on")
        add_user(tmp / "users.json", "anna", PASSWORD, "monailabel-annotator")
        servers.append(AccountsServer(studies, model_dir, {**conf, "auth_users": str(tmp / "users.json")}, tmp / "on.log"))
        off, on = servers

        Client = slicer_client_class()
        plain = Client(off.url, str(tmp), "user-xyz")
        slicer = SlicerLogin(on.url, str(tmp), "anna", PASSWORD)
        slicer()  # signs in once, as Slicer after the login dialog
        result, header = nrrd.read(plain.infer("wholebody", "crop", SLICER)[0])  # warm-up: loads the network
        slicer().infer("wholebody", "crop", SLICER)
        label = np.zeros_like(result)
        label[10:50, 10:50, 5:25] = 5
        label_file = str(tmp / "label.nrrd")
        nrrd.write(label_file, label, header)

        times: dict[str, dict[str, list[float]]] = {}
        for r in range(args.rounds):
            for name, call in actions(label_file).items():
                if name == "infer" and r >= args.infer_rounds:
                    continue
                bearer = Client(on.url, str(tmp), "user-xyz")
                bearer.update_auth(slicer.token)
                clients = {
                    "off": lambda: Client(off.url, str(tmp), "user-xyz"),
                    "on, request": lambda: bearer,
                    "on, as Slicer": slicer,
                }
                row = times.setdefault(name, {mode: [] for mode in clients})
                modes = list(clients)
                for mode in modes[r % 3 :] + modes[: r % 3]:  # each mode first in a third of the rounds
                    row[mode].append(timed(lambda: call(clients[mode]())))
        assert slicer.sign_ins == 1, "the token was not reused"
        check_us = check_alone_us(tmp / "users.json")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    results = {name: {k: statistics.median(v) for k, v in row.items()} for name, row in times.items()}
    print(f"{'action':<14}{'n':>4}{'off ms':>10}{'on, request':>14}{'on, as Slicer':>15}{'request/off':>13}{'Slicer/off':>12}")
    for name, m in results.items():
        n = len(times[name]["off"])
        print(
            f"{name:<14}{n:>4}{m['off']:>10.1f}{m['on, request']:>14.1f}{m['on, as Slicer']:>15.1f}"
            f"{m['on, request'] / m['off']:>13.2f}{m['on, as Slicer'] / m['off']:>12.2f}"
        )
    print(f"the access check alone: {check_us:.0f} us per request")
    if args.out:
        out = {"machine": platform.node(), "rounds": args.rounds, "median_ms": results, "check_alone_us": check_us}
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
