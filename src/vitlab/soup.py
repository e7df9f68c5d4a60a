"""Model soups (Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned
models improves accuracy without increasing inference time"): one model whose weights are the
average of several fine-tunes of one pre-trained checkpoint.

- `uniform_soup`: the element-wise mean of every ingredient's weights (the paper's uniform
  soup; timm's `avg_checkpoints.py` does the same for the checkpoints of one run).
- `greedy_soup`: the paper's Recipe 1. The ingredients are sorted by held-out accuracy, best
  first; the soup starts as the best one, and each next ingredient joins it only if the soup's
  held-out accuracy with it does not drop (>=).

Averaging only works for fine-tunes of one initialisation (they lie in one basin of the loss,
the paper's section 3): ingredients of different architectures or classes, and ingredients
that did not start from the same weights (`vitlab finetune` records their hash,
`vitlab.weights.checkpoint.INIT_HASH`), are refused before anything is evaluated.

`make_soup` is `vitlab soup`: the soup as an ordinary vitlab checkpoint, and with a dataset
the accuracy of each ingredient and soup on the validation images (which choose) and the test
images (reported, never used for a choice), as JSON and a bar chart.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from vitlab.data.sets import DataSplits
from vitlab.errors import CheckpointError, ConfigError
from vitlab.evaluate import (
    EvalContext,
    eval_context,
    eval_data,
    evaluate,
    run_holdout,
    split_loader,
)
from vitlab.figures import new_figure, save_figure
from vitlab.files import write_text
from vitlab.models.registry import build_model
from vitlab.progress import progress_bar
from vitlab.runtime.device import pick_device, unwrap_model
from vitlab.weights.checkpoint import INIT_HASH, load_checkpoint, save_checkpoint
from vitlab.weights.formats import runtime_graph

log = logging.getLogger("vitlab")

# A checkpoint file, or a model already loaded (`vitlab.load_checkpoint`).
Ingredient = str | Path | nn.Module
# Config fields that leave the weights' shapes and meaning alone: ingredients may differ in
# them (the soup takes the first ingredient's). `class_names` is compared on its own.
FREE_FIELDS = ("drop_rate", "attn_drop_rate", "drop_path_rate", "extra", "class_names")
# What `vitlab soup --out DIR` writes there.
SOUP_FILES = {"soup": "soup.safetensors", "report": "soup.json", "chart": "soup.png"}
ALLOW_HINT = "--allow-different-init (Python: allow_different_init=True) averages them anyway"


# ------------------------------------------------------------------------ the ingredients
def ingredient_name(model: nn.Module, index: int) -> str:
    """The file a model was loaded from, else its place in the list."""
    return str(model.cfg.extra.get("loaded_from") or f"ingredient {index + 1}")


def _load(ingredient: Ingredient) -> nn.Module:
    if isinstance(ingredient, nn.Module):
        return unwrap_model(ingredient)
    graph = runtime_graph(ingredient)
    if graph is not None:
        raise ConfigError(
            f"{ingredient} is an {graph.label} graph: a soup averages PyTorch weights; give "
            "the checkpoints it was exported from"
        )
    return load_checkpoint(ingredient)


def load_ingredients(
    ingredients: Sequence[Ingredient], *, allow_different_init: bool = False
) -> list[nn.Module]:
    """The ingredients as models (files read by `vitlab.load_checkpoint`), refused as
    `check_ingredients` says. They stay in memory: the greedy soup averages them many times."""
    if not ingredients:
        raise ConfigError("a soup needs ingredients: give the fine-tuned checkpoints to average")
    models = [_load(x) for x in ingredients]
    check_ingredients(models, allow_different_init=allow_different_init)
    return models


def check_ingredients(models: Sequence[nn.Module], *, allow_different_init: bool = False) -> None:
    """Refuse, in one line, ingredients that cannot be averaged: other classes, another
    architecture (drop rates may differ), or (unless `allow_different_init`) other starting
    weights, or none recorded (Wortsman et al. 2022, section 3: one basin)."""
    names = [ingredient_name(m, i) for i, m in enumerate(models)]
    for m, name in zip(models, names):
        if not hasattr(m, "cfg") or not any(True for _ in m.parameters()):
            raise ConfigError(f"{name} holds no PyTorch weights to average")
    for m, name in zip(models[1:], names[1:]):
        _same_classes(models[0], m, names[0], name)
        _same_architecture(models[0], m, names[0], name)
    if not allow_different_init:
        _same_init(models, names)


def _same_classes(a: nn.Module, b: nn.Module, name_a: str, name_b: str) -> None:
    ca, cb = tuple(a.cfg.class_names or ()), tuple(b.cfg.class_names or ())
    if ca != cb or a.cfg.num_classes != b.cfg.num_classes:
        raise ConfigError(
            f"{name_a} and {name_b} know different classes ({_classes(a)} vs {_classes(b)}): "
            "each output of a soup must mean one class; soup fine-tunes on the same classes"
        )


def _classes(model: nn.Module) -> str:
    names = model.cfg.class_names
    if not names:
        return f"{model.cfg.num_classes} unnamed"
    return ", ".join(names[:3]) + (f", ... ({len(names)})" if len(names) > 3 else "")


def _weight_fields(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """The config's fields that decide the weights, nested ones (a hybrid's backbone) dotted."""
    out: dict[str, Any] = {}
    for k, v in cfg.to_dict().items():
        if k in FREE_FIELDS:
            continue
        if k == "backbone" and v is not None:
            out.update(_weight_fields(cfg.backbone, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _same_architecture(a: nn.Module, b: nn.Module, name_a: str, name_b: str) -> None:
    fa, fb = _weight_fields(a.cfg), _weight_fields(b.cfg)
    diff = [k for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)]
    if diff:
        said = ", ".join(f"{k} {fa.get(k)!r} vs {fb.get(k)!r}" for k in diff[:4])
        raise ConfigError(
            f"{name_a} and {name_b} are different models ({said}): a soup averages the weights "
            "of one architecture; soup fine-tunes of one checkpoint with the same model settings"
        )


def _same_init(models: Sequence[nn.Module], names: Sequence[str]) -> None:
    hashes = [m.cfg.extra.get(INIT_HASH) for m in models]
    missing = [n for n, h in zip(names, hashes) if not h]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(
            f"{missing[0]}{more} does not record the weights it was fine-tuned from (trained "
            "from scratch, or not by `vitlab finetune`): a soup averages fine-tunes of one "
            f"pre-trained checkpoint; {ALLOW_HINT}"
        )
    other = next((i for i, h in enumerate(hashes) if h != hashes[0]), None)
    if other is not None:
        raise ConfigError(
            f"{names[0]} and {names[other]} were fine-tuned from different starting weights "
            f"(init sha256 {hashes[0][:12]}... vs {hashes[other][:12]}...): such an average "
            f"usually fails; fine-tune every ingredient from one checkpoint, or {ALLOW_HINT}"
        )


# ------------------------------------------------------------------------------- averaging
def average(models: Sequence[nn.Module]) -> nn.Module:
    """A new model, the first's config, whose weights are the element-wise mean of the
    models' (`mean_state`): the uniform soup of Wortsman et al. 2022."""
    sds = [unwrap_model(m).state_dict() for m in models]
    for i, sd in enumerate(sds[1:], 1):
        odd = [k for k in sds[0].keys() | sd.keys()
               if k not in sd or k not in sds[0] or sd[k].shape != sds[0][k].shape]  # fmt: skip
        if odd:
            raise CheckpointError(
                f"{ingredient_name(models[i], i)}'s tensors do not match the first "
                f"ingredient's ({', '.join(sorted(odd)[:4])}); soup checkpoints of one model"
            )
    cfg = copy.deepcopy(unwrap_model(models[0]).cfg)
    cfg.extra = _soup_extra(models)
    soup = build_model(cfg)
    soup.load_state_dict(mean_state(sds))
    return soup.eval()


def mean_state(sds: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts of one model, on the CPU: float tensors summed in
    at least fp32 and returned in their own dtype; other tensors (integer buffers, such as a
    BatchNorm's step count) the first's."""
    mean = {}
    for k, v in sds[0].items():
        if not v.is_floating_point():
            mean[k] = v.detach().to("cpu").clone()
            continue
        acc = torch.zeros(v.shape, dtype=torch.promote_types(v.dtype, torch.float32))
        for sd in sds:
            acc += sd[k].detach().to("cpu", acc.dtype)
        mean[k] = (acc / len(sds)).to(v.dtype)
    return mean


def _soup_extra(models: Sequence[nn.Module]) -> dict[str, Any]:
    """The soup's provenance: its ingredients, and their starting weights when they share them
    (a soup is a fine-tune of that start too, and can go into another soup)."""
    hashes = {m.cfg.extra.get(INIT_HASH) for m in models}
    extra: dict[str, Any] = {"soup_of": [ingredient_name(m, i) for i, m in enumerate(models)]}
    if len(hashes) == 1 and None not in hashes:
        extra[INIT_HASH] = hashes.pop()
    return extra


def uniform_soup(
    ingredients: Sequence[Ingredient], *, allow_different_init: bool = False
) -> nn.Module:
    """The uniform soup (Wortsman et al. 2022): the mean of the ingredients' weights, after the
    checks of `check_ingredients`. Takes checkpoint paths or loaded models."""
    return average(load_ingredients(ingredients, allow_different_init=allow_different_init))


@dataclass
class GreedySoup:
    """A greedy soup and how it was chosen (indices are into the ingredients as given)."""

    model: nn.Module
    kept: list[int]  # in the order they joined: the best ingredient first
    val_top1: float  # the soup's held-out accuracy
    scores: list[float]  # each ingredient's held-out accuracy
    tried: list[tuple[int, float, bool]] = field(default_factory=list)  # (i, soup's acc, kept)


def greedy_soup(
    ingredients: Sequence[Ingredient],
    accuracy: Callable[[nn.Module], float],
    *,
    scores: Sequence[float] | None = None,
    allow_different_init: bool = False,
) -> GreedySoup:
    """The greedy soup, Wortsman et al. 2022, Recipe 1: the ingredients sorted by held-out
    `accuracy` (best first; `scores` when already measured), the soup started from the best,
    and each next ingredient added only if the soup's held-out accuracy does not drop (>=).
    `accuracy` must measure held-out (validation) images, never the test set."""
    models = load_ingredients(ingredients, allow_different_init=allow_different_init)
    scores = [float(s) for s in scores] if scores is not None else [accuracy(m) for m in models]
    if len(scores) != len(models):
        raise ConfigError(f"{len(scores)} scores given for {len(models)} ingredients")
    order = sorted(range(len(models)), key=lambda i: -scores[i])  # ties: the order given
    kept, best, tried = [order[0]], scores[order[0]], []
    for i in order[1:]:
        acc = accuracy(average([models[j] for j in [*kept, i]]))
        tried.append((i, acc, acc >= best))
        if acc >= best:
            kept, best = [*kept, i], acc
    return GreedySoup(average([models[j] for j in kept]), kept, best, scores, tried)


# ------------------------------------------------------------------------------ vitlab soup
@dataclass
class SoupEval:
    """The validation and test loaders of a soup's dataset and a progress bar over the
    evaluations (`vitlab.evaluate.evaluate` does each one)."""

    ctx: EvalContext
    loaders: dict[str, DataLoader]  # "val" and/or "test"
    bar: Any = None

    def top1(self, model: nn.Module, split: str) -> float:
        res = evaluate(model.to(self.ctx.device), self.loaders[split], self.ctx, desc=split)
        model.to("cpu")  # the ingredients wait on the CPU
        if self.bar is not None:
            self.bar.update()
        return res.top1

    def scores(self, model: nn.Module) -> dict[str, float | None]:
        return {f"{s}_top1": self.top1(model, s) if s in self.loaders else None
                for s in ("val", "test")}  # fmt: skip


def soup_data(
    models: Sequence[nn.Module],
    paths: Sequence[Ingredient],
    spec: str,
    root: str | Path | None = None,
    *,
    download: bool = False,
    val_split: float | None = None,
    seed: int | None = None,
) -> tuple[DataSplits, dict[str, Any]]:
    """The dataset to measure the soups on, with its validation split: the dataset's own, else
    the images the ingredients' training runs held out (`val_split` and `seed` of the
    config.yaml beside each checkpoint, which must agree), else `val_split`/`seed` given here
    (which win over the runs'). Also says which, for the report."""
    name = ingredient_name(models[0], 0)
    data = eval_data(models[0], spec, root and str(root), download=download, name=name)
    if data.val is not None:
        return data, {"val_split": None, "seed": None}
    split, sd = _holdout(paths, val_split, seed)
    if split > 0:
        data = eval_data(models[0], spec, root and str(root), download=download, name=name,
                         val_split=split, seed=sd)  # fmt: skip
    return data, {"val_split": split or None, "seed": sd if split else None}


def _holdout(
    paths: Sequence[Ingredient], val_split: float | None, seed: int | None
) -> tuple[float, int]:
    """(val_split, seed): the runs' (config.yaml beside each checkpoint) overridden by those
    given; runs that held out other images are refused, or with an override, warned about."""
    runs = {str(p): run_holdout(p) for p in paths if isinstance(p, (str, Path))}
    runs = {p: h if h is None or h[0] > 0 else (0.0, 0) for p, h in runs.items()}  # no seed used
    held = {h for h in runs.values() if h is not None}
    if len(held) > 1 and (val_split is None or seed is None):
        said = ", ".join(f"{p} {h[0]:g}/{h[1]}" for p, h in runs.items() if h is not None)
        raise ConfigError(
            f"the ingredients' runs held out different validation images (val_split/seed: "
            f"{said}), so each trained on images the others hold out; pass --val-split and "
            "--seed to measure on one hold-out anyway"
        )
    run_split, run_seed = held.pop() if len(held) == 1 else (0.0, 0)
    chosen = (run_split if val_split is None else val_split, run_seed if seed is None else seed)
    for p, h in runs.items():
        if h is not None and h != chosen:
            log.warning(
                "note: %s's run held out val_split %g with seed %d, not %g with seed %d: some of "
                "the validation images here were its training images, which favours it",
                p, h[0], h[1], *chosen,
            )  # fmt: skip
    return chosen


def make_soup(
    ingredients: Sequence[Ingredient],
    out: str | Path,
    *,
    greedy: bool = False,
    data: str | None = None,
    root: str | Path | None = None,
    download: bool = False,
    val_split: float | None = None,
    seed: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    allow_different_init: bool = False,
) -> dict[str, Any]:
    """`vitlab soup`: OUT/soup.safetensors, the greedy soup with `greedy` (chosen on `data`'s
    validation images), else the uniform one; with `data`, every ingredient's and soup's
    validation and test top-1 in OUT/soup.json and OUT/soup.png. Returns the report."""
    if greedy and data is None:
        raise ConfigError("--greedy chooses ingredients by validation accuracy: give --data, "
                          "the dataset they were fine-tuned on")  # fmt: skip
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    out = Path(out)
    models = load_ingredients(ingredients, allow_different_init=allow_different_init)
    names = [ingredient_name(m, i) for i, m in enumerate(models)]
    if data is None:
        for role in ("report", "chart"):  # an earlier soup's figures are not this one's
            (out / SOUP_FILES[role]).unlink(missing_ok=True)
        path = save_checkpoint(average(models), out / SOUP_FILES["soup"])
        return {"recipe": "uniform", "soup": str(path), "data": None, "ingredients": names}
    ds, held = soup_data(models, ingredients, data, root, download=download,
                         val_split=val_split, seed=seed)  # fmt: skip
    ev = _soup_eval(models[0], ds, names[0], batch_size, device, greedy)
    report = _measure(models, names, ev, greedy)
    report.update(data=ds.name, val_images=_count(ds.val), test_images=_count(ds.test), **held)
    soup = report.pop("model")
    report["soup"] = str(save_checkpoint(soup, out / SOUP_FILES["soup"]))
    write_text(out / SOUP_FILES["report"], json.dumps(report, indent=2) + "\n")
    plot_soup(report, out / SOUP_FILES["chart"])
    return report


def _count(images: Any) -> int | None:
    return None if images is None else len(images)


def _soup_eval(
    model: nn.Module, data: DataSplits, name: str, batch_size: int, device: str, greedy: bool
) -> SoupEval:
    """The loaders: validation (required to choose: `--greedy`) and test, when there."""
    dev = pick_device(device)
    loaders = {}
    if data.val is not None or greedy:  # without one, the error says how to get one
        loaders["val"] = split_loader(model, data, "val", batch_size, name)
    if data.test is not None:
        loaders["test"] = split_loader(model, data, "test", batch_size, name)
    if not loaders:
        split_loader(model, data, "val", batch_size, name)  # raises: says how to hold some out
    ctx = eval_context(model, data, dev)
    ctx.progress = False  # one bar over the evaluations instead
    return SoupEval(ctx, loaders)


def _measure(
    models: list[nn.Module], names: list[str], ev: SoupEval, greedy: bool
) -> dict[str, Any]:
    """Every ingredient's and soup's top-1, under one progress bar; the soup to save under
    "model"."""
    n, splits = len(models), len(ev.loaders)
    total = (n + 1) * splits + ((n - 1) + ("test" in ev.loaders) if greedy else 0)
    with progress_bar(total=total, desc="soup", unit="eval") as ev.bar:
        rows = [{"path": p, **ev.scores(m)} for p, m in zip(names, models)]
        uniform = average(models)
        report: dict[str, Any] = {"recipe": "greedy" if greedy else "uniform",
                                  "ingredients": rows, "uniform": ev.scores(uniform)}  # fmt: skip
        report["model"] = uniform
        if greedy:
            vals = [r["val_top1"] for r in rows]
            g = greedy_soup(models, lambda m: ev.top1(m, "val"), scores=vals,
                            allow_different_init=True)  # checked when loaded  # fmt: skip
            test = ev.top1(g.model, "test") if "test" in ev.loaders else None
            report["greedy"] = {"val_top1": g.val_top1, "test_top1": test,
                                "kept": [names[i] for i in g.kept],
                                "tried": [{"path": names[i], "soup_val_top1": a, "kept": k}
                                          for i, a, k in g.tried]}  # fmt: skip
            for i, row in enumerate(rows):
                row["kept"] = i in g.kept
            report["model"] = g.model
    return report


# ------------------------------------------------------------------------------- the report
def short_names(paths: Sequence[str]) -> list[str]:
    """The fewest trailing path parts (without the suffix) that tell the paths apart:
    runs/lr1/last.safetensors and runs/lr3/last.safetensors -> lr1/last, lr3/last."""
    parts = [Path(p).with_suffix("").parts or (p,) for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        short = ["/".join(p[-k:]) for p in parts]
        if len(set(short)) == len(set(paths)):
            return short
    return list(paths)


def _rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, figures) per bar group: each ingredient, the uniform soup, the greedy soup."""
    rows = report["ingredients"]
    labels = short_names([r["path"] for r in rows])
    out = [(f"{lab} (kept)" if r.get("kept") else lab, r) for lab, r in zip(labels, rows)]
    out.append((f"uniform soup ({len(rows)})", report["uniform"]))
    if "greedy" in report:
        out.append((f"greedy soup ({len(report['greedy']['kept'])})", report["greedy"]))
    return out


def plot_soup(report: dict[str, Any], path: Path) -> Path:
    """Validation and test top-1 of each ingredient and soup, side by side, as a PNG."""
    rows = _rows(report)
    splits = [s for s in ("val", "test") if rows[0][1].get(f"{s}_top1") is not None]
    fig, (ax,) = new_figure(1, width=max(5.0, 1.1 * len(rows) + 1.5), height=4.0)
    width = 0.8 / len(splits)
    values = [100 * r[f"{s}_top1"] for _, r in rows for s in splits]
    for j, split in enumerate(splits):
        xs = [i + (j - (len(splits) - 1) / 2) * width for i in range(len(rows))]
        ys = [100 * r[f"{split}_top1"] for _, r in rows]
        bars = ax.bar(xs, ys, width, label=f"{split} top-1", color=("C0", "C1")[j])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], rotation=30, ha="right",
                  fontsize=8)  # fmt: skip
    ax.set_ylim(max(0.0, min(values) - 5), min(100.0, max(values) + 3))  # the differences show
    ax.set_ylabel("top-1 (%), axis not from 0")
    ax.set_title(f"{report['data']}: {report['recipe']} soup of {len(report['ingredients'])}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
    return save_figure(fig, path)


def format_summary(report: dict[str, Any]) -> str:
    """The report as a table for the terminal: val and test top-1 of each row."""
    if report.get("data") is None:
        return f"uniform soup of {len(report['ingredients'])} checkpoints (not evaluated)"

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    rows = _rows(report)
    wide = max(len(label) for label, _ in rows)
    held = ""
    if report["val_split"]:
        held = f" (val_split {report['val_split']:g}, seed {report['seed']})"
    lines = [f"{report['data']}: {report['val_images'] or 0} validation images{held}, "
             f"{report['test_images'] or 0} test images",
             f"{'':<{wide}}  {'val top-1':>9}  {'test top-1':>10}"]  # fmt: skip
    lines += [f"{label:<{wide}}  {pct(r['val_top1']):>9}  {pct(r['test_top1']):>10}"
              for label, r in rows]  # fmt: skip
    return "\n".join(lines)
