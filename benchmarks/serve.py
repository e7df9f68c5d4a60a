"""Load test of `vitlab serve`: throughput and latency at 1, 4, 16 and 64 concurrent clients, with
dynamic batching on and off, and a mixed run where 4 requests in 15 are bad files.

    .venv/bin/python benchmarks/serve.py                      # the demo model and ViT-B/16 at 224
    .venv/bin/python benchmarks/serve.py --models demo --requests 64

Each configuration starts its own server on 127.0.0.1 (a `vitlab serve` process) and stops it.
The clients are threads of this process sending the same PNG (a Fashion-MNIST test image for the
demo model, a 224 px photo for ViT-B/16) as a multipart upload; each measurement is bounded by
--requests and --seconds. The mixed run checks every answer: good files get the class the model
gives the same image alone, bad ones 415/422, and nothing else is a 5xx but the intended 503.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(data: bytes, name: str = "image.png") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def post(url: str, data: bytes) -> tuple[int, dict, float]:
    body, kind = multipart(data)
    req = urllib.request.Request(url, data=body, headers={"Content-Type": kind}, method="POST")
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read()), time.perf_counter() - t0
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), time.perf_counter() - t0


class Server:
    """A `vitlab serve` process on a free port, until `stop`."""

    def __init__(self, checkpoint: Path, *flags: str) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "vitlab", "serve", "--checkpoint", str(checkpoint),
                "--port", str(self.port), "-q", *flags]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.proc.stderr.read().decode()[-2000:]) from None
                time.sleep(0.2)
        raise RuntimeError("the server did not start in 120 s")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/healthz", timeout=30) as r:
        return json.loads(r.read())


def load(url: str, payloads: list[bytes], clients: int, requests: int, seconds: float) -> dict:
    """`clients` threads sending `payloads` in turn until `requests` are answered or `seconds`
    pass; img/s and latency percentiles of the 200s."""
    lock, done, results = threading.Lock(), [0], []
    stop_at = time.perf_counter() + seconds

    def client(i: int) -> None:
        while True:
            with lock:
                if done[0] >= requests or time.perf_counter() > stop_at:
                    return
                n = done[0]
                done[0] += 1
            data = payloads[n % len(payloads)]
            status, body, took = post(url + "/v1/predict", data)
            with lock:
                results.append((n % len(payloads), status, body, took))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = sorted(r[3] for r in results if r[1] == 200)
    pick = lambda q: 1000 * ok[min(len(ok) - 1, int(q * len(ok)))] if ok else float("nan")  # noqa: E731
    batches = [r[2].get("batch_size", 1) for r in results if r[1] == 200]
    return {
        "clients": clients,
        "answered": len(results),
        "img_s": len(ok) / wall,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "mean_batch": statistics.fmean(batches) if batches else 0.0,
        "results": results,
    }


def bad_files(good: bytes) -> list[bytes]:
    gif = io.BytesIO()
    Image.new("P", (8, 8)).save(gif, format="GIF")
    return [b"not an image at all", good[: len(good) // 3], b"", gif.getvalue()[:20]]


def reference_classes(checkpoint: Path, images: list[bytes]) -> list[int]:
    """The top-1 class of each image alone, in this process (the answer to check against)."""
    import torch

    import vitlab
    from vitlab.serve.engine import Engine

    engine = Engine(vitlab.load_checkpoint(checkpoint), "ref")
    out = []
    for data in images:
        x, _ = engine.prepare(data, "ref")
        with torch.inference_mode():
            out.append(int(engine.model(x[None]).argmax()))
    return out


def models(which: list[str], folder: Path, demo: Path) -> dict[str, tuple[Path, bytes]]:
    """name -> (checkpoint, the PNG its clients send)."""
    import vitlab
    from vitlab.data.datasets import load_data

    out = {}
    if "demo" in which:
        ckpt = demo
        if not ckpt.is_file():
            raise SystemExit(f"{ckpt} is missing: `make demo` trains the demo model first")
        test = load_data("fashion-mnist").test
        buf = io.BytesIO()
        Image.fromarray(test.images[0, 0].numpy()).save(buf, format="PNG")
        out["demo (vit_micro_p7, 28 px)"] = (ckpt, buf.getvalue())
    if "b16" in which:
        ckpt = folder / "b16.safetensors"
        vitlab.save_checkpoint(vitlab.create_model("vit_b16"), ckpt)  # random weights: speed only
        from skimage import data

        buf = io.BytesIO()
        Image.fromarray(data.astronaut()).resize((224, 224)).save(buf, format="PNG")
        out["ViT-B/16, 224 px"] = (ckpt, buf.getvalue())
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["demo", "b16"], choices=["demo", "b16"])
    p.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16, 64])
    p.add_argument(
        "--demo",
        type=Path,
        default=ROOT / "runs" / "demo" / "last.safetensors",
        help="the demo model's checkpoint (default runs/demo/last.safetensors)",
    )
    p.add_argument("--requests", type=int, default=256, help="per measurement (default 256)")
    p.add_argument("--seconds", type=float, default=60.0, help="per measurement (default 60)")
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (ckpt, image) in models(args.models, Path(tmp), args.demo).items():
            for batching in ("on", "off"):
                rows += measure(name, ckpt, image, batching, args)
            rows.append(mixed(name, ckpt, image, args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def measure(name: str, ckpt: Path, image: bytes, batching: str, args) -> list[dict]:
    """One server (batches of up to 16, or of 1), each client count in turn."""
    server = Server(ckpt, "--max-batch", "16" if batching == "on" else "1", "--max-queue", "256")
    rows = []
    try:
        post(server.url + "/v1/predict", image)  # warm-up
        for c in args.clients:
            before = health(server.url)
            r = load(server.url, [image], c, args.requests, args.seconds)
            r.pop("results")
            after = health(server.url)
            busy = after["inference_seconds"] - before["inference_seconds"]
            r["model_img_s"] = (after["images"] - before["images"]) / max(busy, 1e-9)
            rows.append({"model": name, "batching": batching, **r})
            print(
                f"{name:28} batching {batching:3} clients {c:3}: {r['img_s']:8.1f} img/s "
                f"p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  "
                f"mean batch {r['mean_batch']:.1f}  worker {r['model_img_s']:.1f} img/s while busy",
                flush=True,
            )
    finally:
        server.stop()
    return rows


def mixed(name: str, ckpt: Path, image: bytes, args) -> dict:
    """16 clients, 4 requests in 15 bad files: every answer checked, the server alive."""
    rng = np.random.default_rng(0)
    goods = []
    for _ in range(4):  # four different good images: each must get its own class back
        with Image.open(io.BytesIO(image)) as im:
            arr = np.asarray(im.convert("RGB")).astype(np.int16)
        noisy = np.clip(arr + rng.integers(-40, 40, arr.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, format="PNG")
        goods.append(buf.getvalue())
    bads = bad_files(image)
    payloads = [goods[0], goods[1], bads[0], goods[2], goods[3], bads[1], goods[0], goods[1],
                goods[2], bads[2], goods[3], goods[0], goods[1], goods[2], bads[3]]  # fmt: skip
    want = dict(zip(range(len(goods)), reference_classes(ckpt, goods)))
    server = Server(ckpt, "--max-batch", "16", "--max-queue", "256")
    try:
        r = load(server.url, payloads, 16, args.requests, args.seconds)
        alive = server.alive() and post(server.url + "/v1/predict", image)[0] == 200
    finally:
        server.stop()
    good_ids = {i for i, d in enumerate(payloads) if d in goods}
    wrong, bad_ok, server_errors = 0, 0, 0
    for idx, status, body, _ in r["results"]:
        if status >= 500 and status != 503:
            server_errors += 1
        if idx in good_ids:
            wrong += status != 200 or body["top"][0]["index"] != want[goods.index(payloads[idx])]
        else:
            bad_ok += status in (413, 415, 422)
    n_bad = sum(1 for idx, *_ in r["results"] if idx not in good_ids)
    print(f"{name:28} mixed (4 in 15 bad, 16 clients): {r['answered']} answered, good answered "
          f"wrong {wrong}, bad refused with 4xx {bad_ok}/{n_bad}, 5xx other than 503: "
          f"{server_errors}, alive after: {alive}", flush=True)  # fmt: skip
    return {
        "model": name, "mixed": True, "answered": r["answered"], "wrong": wrong,
        "bad_refused": bad_ok, "bad": n_bad, "server_errors": server_errors, "alive": alive,
    }  # fmt: skip


if __name__ == "__main__":
    main()
