"""`vitlab serve`'s address: a port out of range, a port in use and a host that is not this
machine's are one-line errors before the model loads; the address printed is the one served."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import vitlab
from vitlab.cli.main import main

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = vitlab.create_model("vit_test", img_size=16, patch_size=4, num_classes=4)
    path = tmp_path_factory.mktemp("serve") / "m.safetensors"
    vitlab.save_checkpoint(model, path)
    return str(path)


def one_error_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(autouse=True)
def _never_serve(monkeypatch):
    """A run that got past the checks would serve forever: fail instead."""
    import uvicorn

    def refuse(app, **kw):
        raise AssertionError(f"uvicorn.run was reached with {kw}")

    monkeypatch.setattr(uvicorn, "run", refuse)


@pytest.mark.parametrize("port", ["99999", "65536", "-1"])
def test_a_port_out_of_range_is_refused_by_the_parser(capsys, checkpoint, port):
    err = one_error_line(capsys, ["serve", "--checkpoint", checkpoint, "--port", port])
    assert "--port" in err and port in err


def test_a_port_in_use_is_one_line_naming_it_before_the_model_loads(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        missing = str(tmp_path / "not-loaded.safetensors")  # the port is checked first
        err = one_error_line(capsys, ["serve", "--checkpoint", missing, "--port", str(port)])
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err


def test_a_host_that_is_not_this_machines_is_one_line(capsys, checkpoint):
    argv = ["serve", "--checkpoint", checkpoint, "--host", "203.0.113.7", "--port", "0"]
    err = one_error_line(capsys, argv)  # 203.0.113.7: TEST-NET-3, never a local address
    assert "--host 203.0.113.7 is not an address of this machine" in err


@pytest.mark.parametrize("flag", ["--max-mb", "--max-wait-ms"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_batch_and_size_flags_refuse_nan_and_inf(capsys, checkpoint, flag, value):
    err = one_error_line(capsys, ["serve", "--checkpoint", checkpoint, flag, value])
    assert flag in err and value in err


def test_port_0_serves_on_the_free_port_it_prints(checkpoint):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "vitlab", "-q", "serve", "--checkpoint", checkpoint,
            "--port", "0"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving m.safetensors on http://127.0.0.1:"), proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        assert not url.endswith(":0/")
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "healthz", timeout=2) as r:
                    assert r.status == 200
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
