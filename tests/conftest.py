import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster than handing each small op to two (use it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    yield from _threads(1)


@pytest.fixture
def two_threads():
    """Real models (the bundled ones): both cores."""
    yield from _threads(2)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> tuple[Path, Path]:
    """(manifest of six small world clips, a tiny VAE folder whose latents have unit scale)."""
    from kinetoscope.checkpoint import save_model
    from kinetoscope.data.dataset import ClipDataset
    from kinetoscope.data.world import WorldConfig, write_world
    from kinetoscope.vae import VAE_PRESETS, VideoVAE, compute_latent_stats

    root = tmp_path_factory.mktemp("tiny-world")
    small = WorldConfig(min_side=32, max_side=64, aspect_ratios=("1:1", "2:1"), max_frames=9)
    manifest = write_world(root / "world", clips=6, seed=5, config=small, workers=1,
                           progress=False).manifest  # fmt: skip
    torch.manual_seed(0)
    vae = VideoVAE(VAE_PRESETS["tiny"]).eval()
    dataset = ClipDataset(manifest, max_frames=9, temporal_crop="start")
    shift, scale = compute_latent_stats(vae, (dataset[i]["video"] for i in range(len(dataset))))
    vae.latent_shift.copy_(shift)
    vae.latent_scale.copy_(scale)
    save_model(root / "vae", vae, vae.config)
    return manifest, root / "vae"


# ---------------------------------------------------------------------------------------------
# An OpenAI-compatible chat endpoint, served in the test


class ChatServer:
    """What the test server answers (`answer`: the message text, or raw bytes; with HTTP
    `status`), after `delay` seconds, and every (path, body) it was sent (`seen`)."""

    def __init__(self) -> None:
        self.answer: object = "a caption"
        self.status = 200  # the HTTP status it answers with
        self.delay = 0.0
        self.seen: list[tuple[str, dict]] = []
        self.url = ""

    @staticmethod
    def down_url() -> str:
        """The URL of a port nothing listens on."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


@pytest.fixture
def chat_server():
    state = ChatServer()

    class Chat(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.seen.append((self.path, body))
            time.sleep(state.delay)
            answer = state.answer
            data = answer if isinstance(answer, bytes) else json.dumps(
                {"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()  # fmt: skip
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a client that timed out and left: its broken pipe is expected

    httpd = QuietServer(("127.0.0.1", 0), Chat)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()
