"""`vitlab convert`: read weights in one ecosystem's layout and write them in another's."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vitlab.cli.common import SOURCE_CHOICES, add_data_root_args, number, params_text, parse_set
from vitlab.errors import ConfigError
from vitlab.weights.formats import FORMAT_NAMES, graph_format, runtime_graph

# How timm reads a timm-layout export; `--help` shows it and a test runs it as written. timm
# needs num_classes inside the overlay: given only outside, it drops the file's head.
TIMM_RECIPE = (
    "timm.create_model(NAME, pretrained=True,\n"
    "                  pretrained_cfg_overlay=dict(file=DST, num_classes=N))"
)

HELP = (
    "convert weights between vitlab, timm, Hugging Face, Google .npz, torchvision, ONNX and "
    "OpenVINO"
)

DESCRIPTION = f"""\
Read a checkpoint in any layout vitlab understands and write it in another, so weights trained
or published in one ecosystem run in the others:

  vitlab       one self-describing .safetensors (config and class names inside)
  timm         a timm state dict (.safetensors) that timm reads with
                 {TIMM_RECIPE.replace(chr(10), chr(10) + " " * 17)}
               NAME is timm's name of the architecture (e.g. vit_base_patch16_224) and N the
               export's class count, inside the overlay (outside it, timm drops the head); add
               img_size=S when DST's resolution is not NAME's. Or model.load_state_dict it.
  hf           a new or empty folder ViTForImageClassification.from_pretrained(DST) reads
  google       a vit_jax/big_vision-layout .npz (timm's npz loader reads it too)
  torchvision  a state dict torchvision.models.VisionTransformer.load_state_dict takes (.pth;
               .safetensors keeps the head count, class names and normalisation too)
  onnx         an ONNX graph (.onnx) for ONNX Runtime, fp32 or with --quantize int8, batch axis
               dynamic; its metadata holds the config, class names and preprocessing, so
               vitlab predict, eval, serve and bench run the file alone (extra vitlab[onnx])
  openvino     an OpenVINO IR (DST.xml, its weights in DST.bin beside it), made from the ONNX
               export, fp32 or with --quantize int8 (NNCF, transformer mode, calibrated with
               --calibrate); the same metadata in its runtime info; predict, eval, serve and
               bench run it, in bf16 with --precision bf16 (extra vitlab[openvino])
  deploy       not a layout: every inference path timed on this machine (as `vitlab bench
               --backend all`), and the fastest one's file written: DST.safetensors (PyTorch,
               with the precision to run it in), DST.onnx or DST.xml

DST must be named as the layout is written (.safetensors, .npz, .pth), so that the file says
what it holds. SRC may be a file, a Hugging Face directory, or a hub reference
(hf-hub:ORG/NAME, timm:MODEL.TAG; downloaded once with huggingface_hub). The architecture is
read from the weights; vitlab's own timm and torchvision .safetensors exports carry its config,
and for other files that lack the head count it is taken from the registry (and said), or must
be given with --set num_heads=N.
Each ecosystem computes slightly differently (LayerNorm eps, exact or tanh GELU): the numbers a
model was loaded with travel with it, and a target that cannot express them is refused with the
reason before anything is written; every file is written atomically.

An ONNX export is run once by ONNX Runtime and compared with PyTorch (max logit difference
1e-4) before it is kept. --quantize int8 quantises the matrix multiplications to int8:
dynamically, or, with --calibrate DATA, statically with activation ranges measured on
--calibrate-images images of DATA's training split (then the int8 model's top-1 agreement with
fp32 on those images is printed). LayerNorm, softmax and GELU stay float (see the README).
"""

EPILOG = """\
examples:
  vitlab convert ViT-B_16.npz vit_b16_hf --to hf
  vitlab convert hf-hub:google/vit-base-patch16-224 vit_b16.safetensors --to vitlab
  vitlab convert vit_b_16.pth vit_b16.npz --to google --from torchvision --set num_heads=12
  vitlab convert ViT-B_16.npz vit_b16_384.safetensors --to timm --set img_size=384
  vitlab convert runs/demo/last.safetensors demo.onnx --to onnx   (fp32)
  vitlab convert m.safetensors m-int8.onnx --to onnx --quantize int8 --calibrate fashion-mnist
  vitlab convert ViT-B_16.npz vit_b16.onnx --to onnx --dynamic-img-size
  vitlab convert m.safetensors m.xml --to openvino --quantize int8 --calibrate fashion-mnist
  vitlab convert m.safetensors deploy/m --to deploy --calibrate fashion-mnist
                            the fastest path on this machine, measured; its file is written
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="weights to read: file, directory or hub reference")
    p.add_argument("dst", metavar="DST", help="where to write (a directory for --to hf)")
    p.add_argument(
        "--to",
        required=True,
        choices=[*FORMAT_NAMES, "deploy"],
        help="the layout to write; deploy: time every inference path here and write the "
        "fastest one's file (DST.safetensors, .onnx or .xml)",
    )
    p.add_argument(
        "--from",
        dest="source",
        default="auto",
        choices=SOURCE_CHOICES,
        help="the layout of SRC (default: detected, and reported)",
    )
    p.add_argument(
        "--model",
        metavar="NAME",
        help="build this registry variant instead of reading the architecture (`vitlab models`)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config field to set, e.g. num_heads=12, img_size=384 (resamples position "
        "embeddings), num_classes=10 (a new zero head); repeatable",
    )
    p.add_argument(
        "--resample",
        metavar="METHOD",
        help="position-embedding resampling when img_size changes: google, timm_npz, timm, hf, "
        "torchvision, bicubic, bilinear (default: the source library's own)",
    )
    onnx = p.add_argument_group("ONNX and OpenVINO (--to onnx, --to openvino)")
    onnx.add_argument(
        "--quantize",
        choices=["int8"],
        help="write an int8 model (ONNX: dynamic, or static with --calibrate; OpenVINO: NNCF, "
        "calibrated with --calibrate)",
    )
    onnx.add_argument(
        "--calibrate",
        metavar="DATA",
        help="static int8: calibrate activation ranges on this dataset's training images "
        "(any --data spec, e.g. fashion-mnist, imagefolder:DIR)",
    )
    onnx.add_argument(
        "--calibrate-images",
        type=number(int, 1),
        default=256,
        metavar="N",
        help="how many calibration images, class-balanced (default 256)",
    )
    add_data_root_args(onnx, "--calibrate's dataset")
    onnx.add_argument(
        "--opset",
        type=number(int, 17),
        metavar="N",
        help="an older ONNX operator set for older runtimes (default: the exporter's, 18+); "
        "refused with the reason when it cannot express the model",
    )
    onnx.add_argument(
        "--dynamic-img-size",
        action="store_true",
        help="height and width dynamic too (ViTs resample position embeddings in the graph)",
    )


def run(args: argparse.Namespace) -> int:
    from vitlab.weights import checkpoint as ckpt

    if args.to == "deploy":
        return _to_deploy(args)
    if graph_format(args.to) is not None:  # ONNX or OpenVINO IR
        return _to_graph(args)
    _no_onnx_options(args)
    target = ckpt.get_source(args.to)
    ckpt.check_target(target, Path(args.dst))  # before the (maybe long) read
    model = _read(args)
    out = Path(ckpt.save_checkpoint(model, args.dst, format=args.to))
    files = [out / name for name in target.folder] if target.folder else [out]
    size = sum(f.stat().st_size for f in files)
    print(f"wrote  {out} ({args.to} layout): {len(files)} file(s), {size / 1e6:.1f} MB")
    return 0


def _read(args: argparse.Namespace) -> Any:
    from vitlab.weights import checkpoint as ckpt

    graph = runtime_graph(args.src)
    if graph is not None:
        raise ConfigError(
            f"{args.src} is {graph.label}, a graph to run, whose weights vitlab does not read "
            "back; convert from the checkpoint it was exported from"
        )
    overrides = parse_set(args.overrides, nested=False)
    model = ckpt.load_checkpoint(
        args.src, args.model, source=args.source, resample=args.resample, **overrides
    )
    print(f"read   {args.src} ({model.cfg.extra.get('source')} layout): {describe(model)}")
    return model


def _no_onnx_options(args: argparse.Namespace) -> None:
    given = [
        flag
        for flag, on in (
            ("--quantize", args.quantize),
            ("--calibrate", args.calibrate),
            ("--dynamic-img-size", args.dynamic_img_size),
            ("--opset", args.opset),
        )
        if on
    ]
    if given:
        raise ConfigError(f"{', '.join(given)} are for --to onnx or openvino, not --to {args.to}")


def _to_graph(args: argparse.Namespace) -> int:
    from vitlab.deploy import export_for_deployment

    graph = graph_format(args.to)
    graph.require()
    dst = Path(args.dst)
    if runtime_graph(dst) is not graph or dst.is_dir():
        raise ConfigError(
            f"{dst}: the {graph.name} layout is one file: name it {dst.stem}{graph.suffixes[0]}"
        )
    model = _read(args)
    r = export_for_deployment(
        model,
        dst,
        quantize=args.quantize,
        calibrate=args.calibrate,
        calibration_images=args.calibrate_images,
        data_root=args.data_root,
        download=args.download,
        dynamic_img_size=args.dynamic_img_size,
        opset=args.opset,
    )
    if r.openvino is not None:
        return _said_openvino(r.openvino, args)
    e = r.export
    sizes = ", ".join(f"{s} px" for s in e.checked_sizes)
    print(f"export ONNX opset {e.opset}, batch axis dynamic"
          f"{', height and width dynamic' if e.dynamic_img_size else ''}; ONNX Runtime vs "
          f"PyTorch: max |logit difference| {e.max_abs_diff:.1e} ({sizes})")  # fmt: skip
    if r.quantize is not None:
        q = r.quantize
        print(f"int8   {q.description}")
        if r.agreement is not None:
            print(f"check  int8 and fp32 agree on the top-1 class of {r.agreement:.1%} of the "
                  f"{q.calibration_images} calibration images")  # fmt: skip
    size = dst.stat().st_size / 1e6
    print(f"wrote  {dst} (onnx{', int8' if args.quantize else ', fp32'}): {size:.1f} MB")
    return 0


def _to_deploy(args: argparse.Namespace) -> int:
    """`--to deploy`: every path timed here, the fastest written (`vitlab.deploy`)."""
    from vitlab.bench import format_all
    from vitlab.deploy import deploy_fastest
    from vitlab.progress import progress_bar

    given = [f for f, on in (("--opset", args.opset), ("--dynamic-img-size",
             args.dynamic_img_size), ("--quantize", args.quantize)) if on]  # fmt: skip
    if given:
        raise ConfigError(
            f"--to deploy chooses the format and the precision by measurement: leave out "
            f"{', '.join(given)} (or write that format with --to onnx / openvino)"
        )
    model = _read(args)
    choice = deploy_fastest(
        model,
        args.dst,
        calibrate=args.calibrate,
        calibration_images=args.calibrate_images,
        data_root=args.data_root,
        download=args.download,
        progress=lambda rounds: progress_bar(rounds, total=10, desc="timing", unit="round"),
    )
    print(format_all(choice.measured))
    best, others = choice.chosen, [p for p in choice.measured.paths if p.img_s is not None]
    runner_up = max((p for p in others if p is not best), key=lambda p: p.img_s or 0.0,
                    default=None)  # fmt: skip
    why = f"{best.img_s:.1f} img/s at batch {choice.measured.batch}"
    if runner_up is not None and runner_up.img_s:
        why += f", {best.img_s / runner_up.img_s:.2f}x the next ({runner_up.name})"
    print(f"chose  {best.name}: {why}")
    if choice.agreement is not None:
        print(f"check  int8 and fp32 agree on the top-1 class of {choice.agreement:.1%} of the "
              "calibration images")  # fmt: skip
    run = f" {choice.run_with}" if choice.run_with else ""
    print(f"wrote  {choice.path}; run it with `vitlab predict --checkpoint {choice.path}{run}`")
    return 0


def _said_openvino(r: Any, args: argparse.Namespace) -> int:
    """What `--to openvino` wrote and how it was checked."""
    e = r.export
    print(f"export ONNX opset {e.opset} (ONNX Runtime vs PyTorch: max |logit difference| "
          f"{e.max_abs_diff:.1e}), converted by OpenVINO")  # fmt: skip
    if r.max_abs_diff is not None:
        print(f"check  OpenVINO fp32 vs PyTorch: max |logit difference| {r.max_abs_diff:.1e}")
    if r.agreement is not None:
        print(f"int8   {r.quantization}")
        print(f"check  int8 and PyTorch fp32 agree on the top-1 class of {r.agreement:.1%} of "
              f"the {r.calibration_images} calibration images")  # fmt: skip
    kind = "int8" if args.quantize else "fp32"
    print(f"wrote  {r.path} and {r.path.with_suffix('.bin').name} (OpenVINO IR, {kind}): "
          f"{r.megabytes:.1f} MB; run it in bf16 with --precision bf16")  # fmt: skip
    return 0


def describe(model: Any) -> str:
    """One line of facts about a loaded model."""
    c = model.cfg
    names = " with class names" if c.class_names else ""
    params = f"{params_text(model.num_params())} params"
    if c.arch == "resnetv2":
        return (
            f"ResNetV2 stages {c.layers} x{c.width_factor}, {c.img_size} px, {c.num_classes} "
            f"classes{names}, {params}"
        )
    stem = f"ResNet stem {c.backbone.layers} + " if c.backbone is not None else ""
    return (
        f"{stem}ViT {c.depth} layers, D {c.embed_dim}, {c.num_heads} heads, patch "
        f"{c.patch_size}, {c.img_size} px, {c.num_classes} classes{names}, act {c.act}, "
        f"LayerNorm eps {c.layer_norm_eps:g}, {params}"
    )
