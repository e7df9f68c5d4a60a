"""The page in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by Selenium) opens the page a real `vitlab serve` process serves, uploads a photo, and
finds the top-5 list and the overlay image; a screenshot goes to the test's folder."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

import vitlab
from tests.conftest import perturb_

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None or not Path(DRIVER).is_file(),
        reason="needs Chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]
NAMES = ("astronaut", "coffee", "cat", "other")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    model = perturb_(vitlab.create_model("vit_test", img_size=32, patch_size=8, num_classes=4,
                                         class_names=NAMES), 0.5)  # fmt: skip
    ckpt = tmp_path / "m.safetensors"
    vitlab.save_checkpoint(model, ckpt)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "vitlab", "serve", "--checkpoint", str(ckpt), "--port", str(port)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(proc.stderr.read().decode()[-2000:])
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_the_page_shows_the_top5_and_the_overlay_of_an_uploaded_photo(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    from skimage import data

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(server + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "classes" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "files").send_keys(str(photo))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ol.top li")))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "img.overlay")))
        items = driver.find_elements(By.CSS_SELECTOR, "ol.top li")
        assert len(items) == 4 and all(any(n in i.text for n in NAMES) for i in items)
        overlay = driver.find_element(By.CSS_SELECTOR, "img.overlay")
        assert driver.execute_script("return arguments[0].naturalWidth", overlay) == 32
        assert "astronaut.png" in driver.find_element(By.CSS_SELECTOR, ".card h2").text
        driver.find_element(By.CSS_SELECTOR, "input[value=head]").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "canvas.heat")))
        driver.find_element(By.CSS_SELECTOR, "input[value=overlay]").click()
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        driver.quit()
