"""The web demo: its handlers directly, then the page in a real (headless Chromium) browser."""

import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from kinetoscope.cli import build_parser, main
from kinetoscope.dit import DIT_PRESETS, DiT
from kinetoscope.io import probe, read_video, write_image, write_video
from kinetoscope.pipeline import Pipeline
from kinetoscope.text import TinyTextEncoder
from kinetoscope.vae import VAE_PRESETS, VideoVAE
from kinetoscope.web.demo import INPUT_SIZE, Demo, Limits, Request

pytestmark = [
    pytest.mark.filterwarnings("ignore:prompts longer than"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    torch.manual_seed(0)
    dit = DiT(DIT_PRESETS["tiny"])
    return Pipeline(dit, VideoVAE(VAE_PRESETS["tiny"]), TinyTextEncoder(), precision="fp32")


@pytest.fixture
def demo(pipe, tmp_path) -> Demo:
    return Demo(pipe, tmp_path / "out", Limits(max_side=128, max_frames=65, max_steps=4))


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("uploads")
    video = np.full((9, 48, 64, 3), 20, np.uint8)
    video[:, 16:32, 20:36] = (220, 40, 40)
    paths = {"video": write_video(root / "clip.mkv", video, 8)}
    paths["image"] = write_image(root / "first.png", np.full((70, 90, 3), 200, np.uint8))
    paths["broken"] = root / "broken.png"
    paths["broken"].write_bytes(b"not an image")
    return paths


def test_a_text_request_becomes_a_playable_video_with_its_settings(demo):
    result = demo.run(Request(prompt="a red circle", steps=2, seed=-1, frames=9), progress=False)
    assert probe(result.path).frames == 9 and result.playable == result.path
    assert result.seed >= 0 and f"seed {result.seed}" in result.summary  # the random seed shown
    assert "took" in result.summary and "sampling" in result.summary
    again = demo.run(Request(prompt="a red circle", steps=2, seed=result.seed, frames=9),
                     progress=False)  # fmt: skip
    # Reproducible from its settings (mp4 is lossy: compare decoded frames within a level).
    difference = np.abs(read_video(again.path).astype(int) - read_video(result.path)).mean()
    assert again.seed == result.seed and difference < 1.0
    [(thumb, caption), _] = demo.gallery()
    assert Path(thumb).is_file() and caption.startswith(f"seed {result.seed}")
    assert demo.history[0].settings["prompt"] == "a red circle"


def test_every_mode_runs_from_the_handlers(demo, uploads):
    common = {"prompt": "a red circle", "steps": 1, "frames": 8}
    runs = [
        (Request(mode="animate", image=str(uploads["image"]), size=INPUT_SIZE, **{**common, "frames": 5}), 5),
        (Request(mode="animate", image=str(uploads["image"]), loop=True, **{**common, "frames": 5}), 5),
        (Request(mode="extend", video=str(uploads["video"]), size=INPUT_SIZE, **common), 17),
        (Request(mode="extend", video=str(uploads["video"]), direction="backward", size=INPUT_SIZE, **common), 17),
        (Request(mode="connect", video=str(uploads["video"]), second=str(uploads["video"]), size=INPUT_SIZE, **common), 26),
        (Request(mode="edit", video=str(uploads["video"]), strength=0.5, size=INPUT_SIZE, **common), 9),
        (Request(mode="storyboard", storyboard="5 a red circle\n8 a blue square", steps=1), 13),
        (Request(mode="text", output="gif", **{**common, "frames": 5}), 5),
        (Request(mode="text", output="png", **{**common, "frames": 1}), 1),
    ]  # fmt: skip
    for request, frames in runs:
        result = demo.run(request, progress=False)
        assert probe(result.path).frames == frames, request.mode
    assert len(demo.gallery()) == len(runs)
    image = demo.history[0]
    assert image.settings["image"] == "first.png" and "96x64" in image.summary  # its own, rounded
    assert demo.history[-1].path.suffix == ".png" and demo.history[-1].playable is None


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (Request(prompt=" "), "Write a prompt"),
        (Request(prompt="x", steps=5), "Steps must be from 1 to 4"),
        (Request(prompt="x", size="custom", width=50, height=64), "multiple of 16"),
        (Request(prompt="x", size="custom", width=512, height=64), "from 16 to 128 pixels"),
        (Request(prompt="x", frames=69), "at most 65"),
        (Request(prompt="x", frames=9, output="png"), "PNG is for a single frame"),
        (Request(prompt="x", mode="animate"), "Upload an image"),
        (Request(prompt="x", mode="extend"), "Upload the video"),
        (Request(mode="storyboard", storyboard="five frames of a circle"), "line 1"),
        (Request(prompt="x", mode="animate", image="{broken}"), "broken.png"),
    ],
)
def test_refusals_say_what_to_change_and_leave_the_app_working(demo, uploads, request_, message):
    if request_.image == "{broken}":
        request_.image = str(uploads["broken"])
    if not message.startswith("Steps"):
        request_.steps = 1  # within this demo's limit
    with pytest.raises(ValueError, match=message):
        demo.run(request_, progress=False)
    assert demo.history == []
    assert demo.run(Request(prompt="x", steps=1, frames=1, output="png"), progress=False).path


def test_demo_options_default_to_the_library_limits():
    args = build_parser().parse_args(["demo"])
    limits = Limits()
    assert (args.max_side, args.max_frames, args.max_steps) == (
        limits.max_side, limits.max_frames, limits.max_steps)  # fmt: skip
    assert (args.host, args.concurrency) == ("127.0.0.1", 1)  # this machine only, one job


def test_demo_refuses_bad_options(capsys):
    assert main(["demo", "--port", "0"]) == 2
    assert "--port must be from 1 to 65535" in capsys.readouterr().err
    assert main(["demo", "--concurrency", "0"]) == 2
    assert "--concurrency must be at least 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# In a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(pipe, tmp_path_factory):
    """The app on a free local port, one job at a time."""
    from kinetoscope.web.app import launch

    demo = Demo(pipe, tmp_path_factory.mktemp("served"), Limits(max_side=128, max_steps=4))
    port = _free_port()
    app = launch(demo, "127.0.0.1", port, concurrency=1)
    yield f"http://127.0.0.1:{port}", app, demo
    app.close()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip(
            "needs chromium and chromedriver (Debian: apt install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,1000"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _wait(condition, seconds: float = 60.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError("the page did not get there in time")


def _choose(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{element_id} input")
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value)
    field.send_keys(Keys.ENTER)


@pytest.mark.slow
def test_the_page_generates_plays_animates_and_refuses_in_a_browser(
    served, browser, uploads, tmp_path
):
    from selenium.webdriver.common.by import By

    url, app, demo = served
    assert app._queue.default_concurrency_limit == 1
    browser.get(url)
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
    browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys("a red circle moving right")
    _choose(browser, "size", "1:1 (64x64)")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()

    # The video plays in the page; downloaded, it is the asked size and length.
    src = _wait(lambda: (browser.find_elements(By.CSS_SELECTOR, "#result video") or [None])[0]
                and browser.find_element(By.CSS_SELECTOR, "#result video").get_attribute("src"))  # fmt: skip
    saved = tmp_path / "downloaded.mp4"
    saved.write_bytes(urllib.request.urlopen(src, timeout=30).read())
    assert read_video(saved).shape == (17, 64, 64, 3)
    assert "Text to video: 64x64, 17 frames" in browser.find_element(By.CSS_SELECTOR, "#info").text
    browser.save_screenshot(str(tmp_path / "text-to-video.png"))

    # Image to video: upload, generate at the image's own size.
    browser.find_element(By.XPATH, "//label[contains(., 'Animate an image')]").click()
    upload = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
    upload[0].send_keys(str(uploads["image"]))
    time.sleep(1)
    _choose(browser, "size", INPUT_SIZE)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    _wait(lambda: "Animate an image: 96x64, 17 frames (1 given"
          in browser.find_element(By.CSS_SELECTOR, "#info").text)  # fmt: skip
    browser.save_screenshot(str(tmp_path / "animate.png"))

    # A size off the grid: a message in the page, and the app keeps working.
    browser.find_element(By.XPATH, "//label[contains(., 'Text to video')]").click()
    _choose(browser, "size", "custom")
    width = browser.find_element(By.CSS_SELECTOR, "#width input")
    width.clear()
    width.send_keys("50")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    _wait(lambda: "width must be a multiple of 16: got 50, use 48 or 64" in browser.page_source)
    browser.save_screenshot(str(tmp_path / "refused.png"))
    assert len(demo.history) == 2
    assert (tmp_path / "refused.png").stat().st_size > 0


def test_expansion_shows_the_expanded_prompt(demo):
    result = demo.run(Request(prompt="a red circle", steps=1, seed=2, frames=5, expand=True),
                      progress=False)  # fmt: skip
    expanded = result.summary.split("expanded prompt: ")[1]
    assert "red circle" in expanded and "background" in expanded
    story = demo.run(Request(mode="storyboard", storyboard="5 a red circle\n4 a blue square",
                             steps=1, seed=2, expand=True), progress=False)  # fmt: skip
    assert story.summary.count("expanded prompt: ") == 2


@pytest.mark.slow
def test_the_demo_command_serves_and_stops_cleanly_on_ctrl_c(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    port = _free_port()
    command = [sys.executable, "-m", "kinetoscope", "demo", "--port", str(port), "--threads", "1",
               "--out", str(tmp_path / "results")]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)  # fmt: skip
    try:
        lines = []
        for line in process.stdout:  # until it says where it serves
            lines.append(line)
            if "kinetoscope demo: http://127.0.0.1:" in line:
                break
        assert any(f"127.0.0.1:{port}" in line for line in lines), lines
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=30).read()
        assert b"kinetoscope" in page
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, rest
    assert "stopping" in rest and "Traceback" not in rest
