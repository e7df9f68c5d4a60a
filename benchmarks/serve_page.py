"""The README's picture of `vitlab serve`: the page in headless Chromium with a Fashion-MNIST
model and three test images uploaded, written to docs/serve.png.

    .venv/bin/python benchmarks/serve_page.py --checkpoint runs/demo/last.safetensors

Needs Debian's chromium and chromium-driver, and Fashion-MNIST (Debian's dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import Server  # this folder's load test, importable once the folder is on the path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "demo" / "last.safetensors")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "serve.png")
    args = p.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from vitlab.data.datasets import load_data

    test = load_data("fashion-mnist").test
    server = Server(args.checkpoint)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,760"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for i in (0, 1, 2):  # an ankle boot, a pullover and trousers
                path = Path(tmp) / f"fashion-mnist-test-{i}.png"
                Image.fromarray(test.images[i, 0].numpy()).save(path)
                files.append(str(path))
            driver.get(server.url + "/")
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: "classes" in d.find_element(By.ID, "model").text)
            driver.find_element(By.ID, "files").send_keys("\n".join(files))
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "img.overlay")) == 3)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        server.stop()


if __name__ == "__main__":
    main()
