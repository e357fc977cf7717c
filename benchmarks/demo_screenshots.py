"""Screenshots of `kinetoscope demo` for the README, at a laptop width and a phone width.

Serves the app with the bundled model (or `--model`) on a free local port, generates the
README's main prompt in headless Chromium, and saves docs/demo-laptop.png (1280 px wide) and
docs/demo-phone.png (390 px wide), after a result is on the page.

    python benchmarks/demo_screenshots.py [--model DIR] [--out docs]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from kinetoscope.pipeline import Pipeline
from kinetoscope.web.app import launch
from kinetoscope.web.demo import Demo

PROMPT = "a large red circle moving right and a small blue square falling, on a black background"
WIDTHS = {"laptop": (1280, 1000), "phone": (390, 1600)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser(width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def _wait(condition, seconds: float = 120.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.25)
    raise TimeoutError("the page did not show a result")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the bundled world model)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"))
    args = parser.parse_args()
    demo = Demo(Pipeline.load(args.model), tempfile.mkdtemp(prefix="kinetoscope-demo-"))
    port = _free_port()
    app = launch(demo, "127.0.0.1", port)
    try:
        for name, (width, height) in WIDTHS.items():
            browser = _browser(width, height)
            try:
                browser.get(f"http://127.0.0.1:{port}")
                _wait(lambda b=browser: b.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
                browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys(PROMPT)
                browser.find_element(By.CSS_SELECTOR, "#generate").click()
                _wait(lambda b=browser: "Text to video" in b.find_element(By.ID, "info").text)
                time.sleep(1.5)  # let the video show its first frames
                path = Path(args.out) / f"demo-{name}.png"
                browser.save_screenshot(str(path))
                print(f"wrote {path}")
            finally:
                browser.quit()
    finally:
        app.close()


if __name__ == "__main__":
    main()
