"""`vitlab serve` through FastAPI's test client: every endpoint, every kind of bad input, batching
that changes no result, the 503 path, and /v1/model against the checkpoint."""

import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from tests.conftest import perturb_
from vitlab.cli.main import build_parser
from vitlab.cli.serve import build
from vitlab.serve import Batcher, Engine, QueueFull, ServeConfig, create_app

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

NAMES = ("cat", "dog", "bird", "fish")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = perturb_(vitlab.create_model("vit_test", img_size=16, patch_size=4, num_classes=4,
                                         class_names=NAMES), 0.5)  # fmt: skip
    path = tmp_path_factory.mktemp("serve") / "m.safetensors"
    vitlab.save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return vitlab.load_checkpoint(checkpoint)


def client_for(model, **config):
    return TestClient(create_app(Engine(model, "tiny"), ServeConfig(**config)))


@pytest.fixture(scope="module")
def client(model):
    with client_for(model) as c:
        yield c


def png(seed=0, size=(20, 24), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    img = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def unbatched(model, data: bytes) -> torch.Tensor:
    x, _ = Engine(model, "ref").prepare(data, "ref")
    with torch.inference_mode():
        return model(x[None]).float().softmax(-1)[0]


def test_predict_a_multipart_upload_and_raw_bytes_alike(client, model):
    data = png(1)
    a = client.post("/v1/predict", files={"file": ("a.png", data, "image/png")}).json()
    b = client.post("/v1/predict?topk=2", content=data, headers={"content-type": "image/png"})
    assert b.status_code == 200
    b = b.json()
    want = unbatched(model, data)
    assert [t["index"] for t in a["top"]] == want.argsort(descending=True).tolist()
    assert a["top"][0]["label"] in NAMES and len(b["top"]) == 2
    assert b["top"] == a["top"][:2]
    assert abs(a["top"][0]["probability"] - float(want.max())) < 1e-5


def test_explain_returns_the_rollout_every_head_and_an_overlay_png(client, model):
    r = client.post("/v1/predict?explain=true", files={"file": ("a.png", png(2), "image/png")})
    ex = r.json()["explain"]
    assert ex["grid"] == [4, 4] and np.asarray(ex["rollout"]).shape == (4, 4)
    assert np.asarray(ex["heads"]).shape == (2, 2, 4, 4)  # blocks, heads, grid
    import base64

    with Image.open(io.BytesIO(base64.b64decode(ex["overlay_png"]))) as im:
        assert im.format == "PNG" and im.size == (16, 16)


def test_model_describes_the_checkpoint(client, model):
    d = client.get("/v1/model").json()
    assert d["class_names"] == list(NAMES) and d["num_classes"] == 4
    assert d["preprocessing"]["img_size"] == 16 and d["config"]["depth"] == model.cfg.depth
    assert d["params"] == model.num_params()


def test_health_page_static_files_and_openapi(client):
    assert client.get("/healthz").json()["status"] == "ok"
    page = client.get("/")
    assert (
        page.status_code == 200
        and "/static/app.js" in page.text
        and "http" not in page.text.split("<footer>")[0]
    )
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/../../pyproject.toml").status_code == 404
    assert client.get("/static/index.html").status_code == 404
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def truncated() -> bytes:
    return png(3)[:60]


def bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 415, "empty file"),
        (b"hello, not an image", 415, "not an image"),
        (truncated(), 422, "truncated or corrupt"),
        ("bomb", 422, "pixel limit"),
    ],
)
def test_bad_images_get_a_status_and_a_json_reason_and_the_server_goes_on(
    model, body, status, words
):
    with client_for(model, max_bytes=1 << 20) as c:
        data = bomb() if body == "bomb" else body
        c.app.state.engine.max_pixels = 1_000_000
        r = c.post("/v1/predict", files={"file": ("x.png", data, "image/png")})
        assert r.status_code == status and words in r.json()["error"], r.text
        assert c.post("/v1/predict", content=png(4)).status_code == 200


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "LA", "P", "RGBA", "1", "F"])
def test_every_pil_mode_is_converted_as_predict_converts_it(client, model, mode):
    """No mode is refused: each is converted to the model's channels exactly as `vitlab
    predict` does (alpha on white, palettes expanded, 16-bit and float scaled)."""
    rgb = Image.open(io.BytesIO(png(30))).convert("RGB")
    img = rgb.convert("L").convert(mode) if mode in ("I;16", "F", "1") else rgb.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="TIFF")
    r = client.post("/v1/predict?topk=4", files={"file": ("x.tif", buf.getvalue(), "image/tiff")})
    assert r.status_code == 200, r.text
    got = torch.tensor(
        [t["probability"] for t in sorted(r.json()["top"], key=lambda t: t["index"])]
    )
    assert torch.allclose(got, unbatched(model, buf.getvalue()), atol=1e-5)


def test_a_body_over_the_limit_is_413(model):
    with client_for(model, max_bytes=3000) as c:
        r = c.post("/v1/predict", content=b"x" * 5000)
        assert r.status_code == 413 and "limit is 3000" in r.json()["error"]
        chunks = iter([b"x" * 1600, b"y" * 1600])  # no content-length: counted while reading
        assert c.post("/v1/predict", content=chunks).status_code == 413
        assert c.post("/v1/predict", content=png(5)).status_code == 200


def test_a_form_without_a_file_and_a_bad_topk_are_422(client):
    r = client.post("/v1/predict", files={"picture": ("a.png", png(6), "image/png")})
    assert r.status_code == 422 and "no file field named 'file'" in r.json()["error"]
    assert client.post("/v1/predict?topk=0", content=png(6)).status_code == 422


def test_a_request_cannot_name_a_file_on_the_server(client, checkpoint):
    # a path in the form's file field is a string, not an upload: nothing is opened
    extra = {"other": ("o.txt", b"x", "text/plain")}  # makes the request multipart
    r = client.post("/v1/predict", data={"file": str(checkpoint)}, files=extra)
    assert r.status_code == 422 and "no file field" in r.json()["error"]
    # and a path as the raw body is bytes that are not an image
    r = client.post("/v1/predict", content=str(checkpoint).encode())
    assert r.status_code == 415 and "not an image" in r.json()["error"]


def test_a_batch_gives_each_image_its_unbatched_result(model):
    engine = Engine(model, "tiny")
    images = [png(i, size=(16 + i, 20)) for i in range(6)]
    xs = torch.stack([engine.prepare(d, "x")[0] for d in images])
    together = engine.run(xs, explain=False)
    for d, out in zip(images, together):
        assert torch.allclose(out.probs, unbatched(model, d), atol=1e-5)
        lg = model(engine.prepare(d, "x")[0][None])[0]
        assert (out.logits - lg).abs().max() < 1e-5


def test_concurrent_requests_are_batched_and_answered_as_if_alone(model):
    with client_for(model, max_batch=8, max_wait_ms=200) as c:
        images = [png(10 + i) for i in range(8)]
        answers = [None] * 8

        def ask(i):
            answers[i] = c.post("/v1/predict?topk=4", content=images[i]).json()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert max(a["batch_size"] for a in answers) > 1
        for data, a in zip(images, answers):
            want = unbatched(model, data)
            got = torch.tensor(
                [t["probability"] for t in sorted(a["top"], key=lambda t: t["index"])]
            )
            assert torch.allclose(got, want, atol=1e-5)


def test_a_full_queue_is_503_with_retry_after_and_then_serves_again(model):
    gate = threading.Event()
    with client_for(model, max_queue=1, max_batch=1, max_wait_ms=0) as c:
        batcher = c.app.state.batcher
        run = batcher.run_batch
        batcher.run_batch = lambda x, e: (gate.wait(10), run(x, e))[1]
        first = threading.Thread(target=lambda: c.post("/v1/predict", content=png(20)))
        first.start()  # taken by the worker, which now waits on the gate
        time.sleep(0.3)
        second = threading.Thread(target=lambda: c.post("/v1/predict", content=png(21)))
        second.start()  # fills the queue
        time.sleep(0.3)
        r = c.post("/v1/predict", content=png(22))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "busy" in r.json()["error"]
        gate.set()
        first.join()
        second.join()
        batcher.run_batch = run
        assert c.post("/v1/predict", content=png(23)).status_code == 200


def test_a_cancelled_request_frees_its_place_before_its_batch_runs():
    ran = []
    b = Batcher(lambda x, e: ran.append(len(x)) or [None] * len(x), max_batch=4, max_wait=0.2)
    b.start()
    try:
        f1, f2 = b.submit(torch.zeros(1)), b.submit(torch.zeros(1))
        f1.cancel()  # the client went away while it waited
        assert f2.result(timeout=5) == (None, 1)
        assert ran == [1] and b.stats.dropped == 1
    finally:
        b.stop()


def test_the_queue_refuses_beyond_its_size():
    b = Batcher(lambda x, e: [None] * len(x), max_queue=2)  # not started: nothing is taken
    b.submit(torch.zeros(1))
    b.submit(torch.zeros(1))
    with pytest.raises(QueueFull):
        b.submit(torch.zeros(1))


def test_the_command_line_builds_the_app_from_a_checkpoint(checkpoint):
    args = build_parser().parse_args(["serve", "--checkpoint", str(checkpoint), "--max-mb", "1"])
    app = build(args)
    assert app.state.config.max_bytes == 1 << 20 and app.state.engine.name == "m.safetensors"
    with TestClient(app) as c:
        assert c.get("/v1/model").json()["class_names"] == list(NAMES)


def test_an_onnx_file_is_served_with_the_checkpoints_answers(checkpoint, model, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx_path = vitlab.save_checkpoint(model, tmp_path / "m.onnx", format="onnx")
    app = build(build_parser().parse_args(["serve", "--checkpoint", str(onnx_path)]))
    data = png(3)
    with TestClient(app) as c:
        got = c.post("/v1/predict", files={"file": ("a.png", data, "image/png")}).json()
        want = unbatched(model, data)
        assert [t["index"] for t in got["top"]] == want.argsort(descending=True).tolist()
        assert abs(got["top"][0]["probability"] - float(want.max())) < 1e-5
        described = c.get("/v1/model").json()
        assert described["class_names"] == list(NAMES) and not described["can_explain"]
        assert described["params"] == model.num_params()
        r = c.post("/v1/predict?explain=true", files={"file": ("a.png", data, "image/png")})
        assert r.status_code == 422 and "ONNX graph" in r.json()["error"]


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "words"),
    [
        ("GET", "/nope", None, 404, "nothing at /nope; the page is /"),
        ("POST", "/healthz", None, 405, "POST is not allowed on /healthz; use GET"),
        ("GET", "/v1/predict", None, 405, "use POST"),
        ("POST", "/v1/predict?topk=abc", "png", 422, "topk: Input should be a valid integer"),
        ("POST", "/v1/predict?explain=maybe", "png", 422, "explain: Input should be a valid"),
        ("POST", "/v1/predict", "form", 400, "the multipart form cannot be read"),
    ],
)
def test_every_error_answer_is_a_json_error_fastapis_own_included(
    client, method, url, body, status, words
):
    """FastAPI's validation (422), Starlette's 404/405 and an unparsable form (400) answer in
    the documented `{"error": ...}` shape, as vitlab's own errors do."""
    kw = {}
    if body == "png":
        kw = {"content": png(7), "headers": {"content-type": "image/png"}}
    elif body == "form":
        kw = {"content": b"garbage", "headers": {"content-type": "multipart/form-data"}}
    r = client.request(method, url, **kw)
    assert r.status_code == status and r.headers["content-type"] == "application/json", r.text
    assert list(r.json()) == ["error"] and words in r.json()["error"], r.text


def test_an_unexpected_failure_is_a_json_500(model, monkeypatch):
    app = create_app(Engine(model, "tiny"), ServeConfig())

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.state.engine, "answer", broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/predict", content=png(8))
    assert r.status_code == 500 and list(r.json()) == ["error"], r.text
    assert "RuntimeError" in r.json()["error"]


def test_the_cdn_docs_pages_are_off_and_the_page_links_the_openapi_description(client):
    """/docs and /redoc would load Swagger UI and ReDoc from a CDN (blank offline): off, with
    the API described at /openapi.json, which the page links."""
    for url in ("/docs", "/redoc"):
        r = client.get(url)
        assert r.status_code == 404 and "/openapi.json" in r.json()["error"]
    assert client.get("/openapi.json").status_code == 200
    page = client.get("/").text
    assert 'href="/openapi.json"' in page and "/docs" not in page


def test_serve_in_bf16_answers_near_fp32_and_says_its_precision(checkpoint, model):
    args = build_parser().parse_args(["serve", "--checkpoint", str(checkpoint), "--precision",
                                      "bf16"])  # fmt: skip
    app = build(args)
    data = png(5)
    with TestClient(app) as c:
        assert c.get("/v1/model").json()["precision"] == "bf16"
        got = c.post("/v1/predict", files={"file": ("a.png", data, "image/png")}).json()
        explained = c.post("/v1/predict?explain=true", files={"file": ("a.png", data, "image/png")})
        assert explained.status_code == 200 and "rollout" in explained.json()["explain"]
    want = unbatched(model, data)
    p = {t["index"]: t["probability"] for t in got["top"]}
    assert p != {i: float(q) for i, q in enumerate(want)}  # rounded: bf16 ran
    assert max(abs(p[i] - float(want[i])) for i in p) < 0.02


def test_an_onnx_file_is_not_served_in_bf16(checkpoint, model, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from vitlab.cli.main import main

    onnx_path = vitlab.save_checkpoint(model, tmp_path / "m.onnx", format="onnx")
    assert (
        main(["serve", "--checkpoint", str(onnx_path), "--precision", "bf16", "--port", "0"]) == 2
    )
    err = capsys.readouterr().err
    assert "cannot run in bf16: use precision fp32" in err and "Traceback" not in err
