"""Where and how a model runs on this machine (vitlab.runtime.device): the device, unwrapping
compiled and DDP-style models, the CPU's features, and `torch.compile` without a C++ compiler."""

import pytest
import torch

import vitlab
from vitlab.errors import ConfigError
from vitlab.runtime import device


@pytest.mark.parametrize(
    ("name", "needle"),
    [("gpu", "is not a device"), ("meta", "not supported"), ("cuda", "no CUDA GPU")],
)
def test_bad_devices_are_one_line_errors(name, needle, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=needle):
        device.pick_device(name)


def test_auto_device_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.pick_device("auto") == device.pick_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.pick_device("auto", local_rank=1) == torch.device("cuda:1")


def test_unwrap_model_sees_through_compile_and_ddp_style_wrappers():
    model = vitlab.create_model("vit_test")
    wrapped = torch.nn.Module()
    wrapped.module = torch.compile(model)
    assert device.unwrap_model(wrapped) is model


def test_cpu_info_reads_the_machine():
    info = device.cpu_info()
    assert info["cores"] >= 1 and info["model"]
    assert isinstance(info["avx512_bf16"], bool) and isinstance(info["amx_bf16"], bool)


def test_without_a_cxx_compiler_compile_is_skipped_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    assert device.can_compile(torch.device("cpu")) is False
    assert "no C++ compiler" in caplog.text and "compile=false" in caplog.text
    assert device.can_compile(torch.device("cuda")) is True
