"""Start-up without weights, and the official-weights download through the app, against real servers."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch

from conftest import wait_for
from lib.networks import spleen_unet
from lib.weights.download import OFFICIAL_WEIGHTS, ensure_weights, md5sum

pytestmark = pytest.mark.e2e


def weights_of(server, model: str) -> dict:
    return server.info()["models"][model]["weights"]


def download_finished(server, model: str) -> dict | None:
    weights = weights_of(server, model)
    return None if any("downloading" in w["message"] for w in weights.values()) else weights


# ----------------------------------------------------------------------------- untrained start


def test_untrained_start_is_fast_and_says_where_weights_go(start_server):
    server = start_server(conf={"models": "wholebody,spleen"})  # the fixture's weights URL is unreachable
    assert server.started_in < 30, f"start-up took {server.started_in:.1f} s"

    expected = {
        "wholebody": {"highres": "wholebody_highres", "lowres": "wholebody_lowres"},
        "spleen": {"default": "spleen"},
    }
    # The failed downloads run in the background; wait for them so the final message is checked.
    for model in expected:
        assert wait_for(lambda: download_finished(server, model), 30), weights_of(server, model)

    models = server.info()["models"]
    for model, entries in expected.items():
        info = models[model]
        assert info["untrained"] is True, info
        assert "UNTRAINED" in info["description"]
        assert set(info["weights"]) == set(entries)
        for variant, key in entries.items():
            entry = OFFICIAL_WEIGHTS[key]
            path = str(server.model_dir / entry.relative_path)
            weights = info["weights"][variant]
            assert weights["untrained"] is True
            assert weights["official"] == path
            assert path in weights["message"], weights["message"]
            assert entry.url_name in weights["message"] and entry.md5 in weights["message"], weights["message"]
            assert not Path(path).exists()
    assert "Traceback" not in server.log.read_text()


# ----------------------------------------------------------------------------- download


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, *args) -> None:
        pass

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def weights_host(tmp_path):
    """An http.server on 127.0.0.1 serving a random spleen UNet under the official file name."""
    folder = tmp_path / "served"
    folder.mkdir()
    entry = OFFICIAL_WEIGHTS["spleen"]
    served = folder / entry.url_name
    torch.manual_seed(1)
    torch.save(spleen_unet().state_dict(), served)

    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, handler.requests
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_download_rejected_on_md5_then_accepted_with_matching_md5(start_server, weights_host):
    url, served, requests_seen = weights_host
    entry = OFFICIAL_WEIGHTS["spleen"]
    assert md5sum(served) != entry.md5  # a random network cannot be the official file

    server = start_server(conf={"models": "spleen", "weights_url": url})
    target = server.model_dir / entry.relative_path

    # The app downloads in the background and must reject the file: its md5 is not the published one.
    weights = wait_for(lambda: download_finished(server, "spleen"), 30)
    assert weights, weights_of(server, "spleen")
    assert f"/{entry.url_name}" in requests_seen, requests_seen
    status = weights["default"]
    assert status["untrained"] is True, status
    assert "rejected" in status["message"] and "md5" in status["message"], status["message"]
    assert server.info()["models"]["spleen"]["untrained"] is True
    assert not target.exists()
    assert not target.parent.exists() or not any(target.parent.iterdir())  # no partial file left

    # The accept path, in-process against the same host: the same entry with the served file's md5.
    accepted = dataclasses.replace(entry, md5=md5sum(served))
    result = ensure_weights(accepted, server.model_dir, base_url=url)
    assert result.present and result.source == "downloaded", result
    assert result.path == target
    assert target.read_bytes() == served.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["model.pt"]  # bundle layout, no temp file left
    state = torch.load(target, map_location="cpu", weights_only=True)
    assert state.keys() == spleen_unet().state_dict().keys()

    # The running server picks the file up without a restart.
    status = weights_of(server, "spleen")["default"]
    assert status["untrained"] is False and status["message"] == f"using official weights: {target}", status
    assert server.info()["models"]["spleen"]["untrained"] is False
