"""The one registry of formats: what it tells apart, and that the command line can read it
without torch."""

import subprocess
import sys

import pytest

from vitlab.weights import formats


def test_runtime_graphs_are_told_by_their_name():
    assert formats.runtime_graph("m.onnx") is formats.ONNX
    assert formats.runtime_graph("runs/M.ONNX") is formats.ONNX
    assert formats.runtime_graph("deploy/m.xml") is formats.OPENVINO
    for weights in ("m.safetensors", "ViT-B_16.npz", "hf-hub:google/vit", "runs/demo", None):
        assert formats.runtime_graph(weights) is None
    assert formats.graph_format("onnx") is formats.ONNX and formats.graph_format("timm") is None
    assert formats.graph_format("openvino") is formats.OPENVINO
    assert (*formats.SOURCE_NAMES, "onnx", "openvino") == formats.FORMAT_NAMES


def test_entry_points_load():
    pytest.importorskip("onnxruntime")
    from vitlab.weights.onnx import export_onnx, load_onnx

    assert formats.ONNX.loader() is load_onnx and formats.ONNX.saver() is export_onnx
    pytest.importorskip("openvino")
    from vitlab.weights.openvino import export_openvino, load_openvino

    assert formats.OPENVINO.loader() is load_openvino
    assert formats.OPENVINO.saver() is export_openvino


def test_the_registry_imports_without_torch():
    code = "import sys, vitlab.weights.formats; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_convert_offers_every_format():
    from vitlab.cli.common import Parser
    from vitlab.cli.convert import add_parser

    sub = Parser(prog="vitlab").add_subparsers(parser_class=Parser)
    add_parser(sub)
    to = next(a for a in sub.choices["convert"]._actions if a.dest == "to")
    assert tuple(to.choices) == (*formats.FORMAT_NAMES, "deploy")  # and the measured choice
