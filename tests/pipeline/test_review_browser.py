"""The review page in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium): a batch labelled by keyboard alone, the server killed mid-way and restarted, and the batch
file checked against every key pressed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from lakelabel.data_specs.batches import read_batch
from lakelabel.pipeline.config import EmbedConfig, SuggestConfig
from lakelabel.pipeline.embed import embed
from lakelabel.pipeline.review_page import find_batch
from lakelabel.pipeline.suggest import suggest
from lakelabel.pipeline.truth import attach_keys
from tests.conftest import free_port
from tests.pipeline.test_review import NAMES
from tests.roots import copy_root


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail(
            "no headless browser: apt-get install chromium chromium-driver (the README's test command)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def _serve(root: Path, batch: str, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "lakelabel", "review", str(root), "--batch", batch, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/batch", timeout=1).close()
            return server
        except OSError:
            if server.poll() is not None:
                raise AssertionError(server.stderr.read().decode()) from None
            time.sleep(0.1)
    raise AssertionError("the review server did not start")


def test_label_a_batch_by_keyboard_through_a_server_kill(cifar_root, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = tmp_path / "root"
    copy_root(cifar_root[0], root)
    embed(root, EmbedConfig(encoder="tiny", workers=0))
    truth = attach_keys(root, pd.read_csv(cifar_root[1])).set_index("key")
    suggest(root, SuggestConfig(budget=12, classes=NAMES, name="keys"))
    batch = find_batch(root, "keys")
    order = read_batch(batch).key.tolist()
    port = free_port()
    server = _serve(root, "keys", port)
    browser = _driver()
    pressed: dict[str, str] = {}  # key → the answer we gave

    def shown() -> str:
        return browser.find_element(By.ID, "img").get_attribute("data-key") or ""

    def press(char: str) -> str:
        key = shown()
        browser.find_element(By.TAG_NAME, "body").send_keys(char)
        WebDriverWait(browser, 10).until(lambda _: shown() != key or "done" in _done())
        return key

    def _done() -> str:
        return "done" if browser.find_element(By.ID, "done").is_displayed() else ""

    def digit(key: str) -> str:
        return str((int(truth.label[key]) + 1) % 10)  # class 0 is key 1, …, class 9 is key 0

    try:
        browser.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(browser, 20).until(lambda _: shown() == order[0])
        started = time.perf_counter()
        for _ in range(6):
            pressed[press(digit(shown()))] = "label"
        per_label = (time.perf_counter() - started) / 6
        # the next image is preloaded while this one is judged
        assert browser.execute_script("return pre.src").endswith(f"{order[7]}.png")
        assert press("n") == order[6]
        assert press("u") == order[7] and shown() == order[6]  # undo brings it back
        pressed[press("s")] = "skip"
        assert "7 / 12" in browser.find_element(By.ID, "progress").text
        on_disk = read_batch(batch)  # stored as given, before the server goes
        assert (on_disk.answer != "").sum() == 7
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        server = _serve(root, "keys", port)  # a restart resumes where the person stopped
        browser.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(browser, 20).until(lambda _: shown() == order[7])
        assert "7 / 12" in browser.find_element(By.ID, "progress").text
        for _ in range(5):
            pressed[press(digit(shown()))] = "label"
        WebDriverWait(browser, 10).until(lambda _: _done())
    finally:
        browser.quit()
        server.kill()
        server.wait(timeout=10)
    final = read_batch(batch).set_index("key")
    assert final.answer.to_dict() == pressed and len(pressed) == 12
    labelled = final[final.answer == "label"]
    assert (labelled.label.astype(int) == truth.label[labelled.index]).all()
    assert (labelled.label_name == truth.label_name[labelled.index]).all()
    assert final.label[order[6]] == "" and final.answered_at.ne("").all()
    print(f"review page: {per_label * 1000:.0f} ms per keyboard label (browser round trip)")
