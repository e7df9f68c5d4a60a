"""A study's plan: its preset read, overridden and checked, then expanded into points, each an
ordinary training run with a fully resolved TrainConfig. Generic: what differs between studies
(their own keys, their check, their expansion) is in `vitlab.study.studies`.

A study preset (`configs/studies/NAME-PRESET.yaml`) is data, not code. Every study has:

- `study`: its name; `description`: a paragraph for the report page;
- `train`: TrainConfig keys every point shares;
- `families`: name -> TrainConfig keys of a model family (`label:` is its name in the report);
  a family set to null is dropped (`--set families.hybrid=null`);
- `seeds`: every point is trained once per seed (the report shows mean and spread);
- `budget`: train each point to convergence, its validation interval and step cap scaled to its
  training images (`vitlab.study.budget`; none: the steps the preset gives);
- in a family, `lr_grid`: its learning rate chosen on validation accuracy from a small grid
  (`vitlab.study.lr_grid`);

and the keys of its own (its axis and stages: see its module in `vitlab.study.studies`).
A point's config is `train`, the layers the study adds (the family, its stages, its axis
value), the seed, then `--set` keys that are not study keys (they apply to every point); then
the budget's steps, and at run time the learning rate its grid chose.
Every key and value is checked by `make_plan`, before anything trains. `study.yaml` holds the
whole plan; each point's run directory holds `point.yaml`, the config `vitlab train --config`
runs it with (with the learning rate its grid chose, once the grid has finished).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitlab.errors import ConfigError, VitlabError
from vitlab.study import budget, lr_grid
from vitlab.study.keys import (
    TRAIN_KEYS,
    check_mapping,
    check_name,
    check_seeds,
    check_text,
    check_train_keys,
    did_you_mean,
    drop_nulls,
    per_point,
)
from vitlab.study.points import ALL, FAMILY_KEYS, Plan, Point, family_label
from vitlab.study.studies import STUDIES, Study, get_study
from vitlab.train.config import TrainConfig, build_config, configs_dir, read_yaml

__all__ = ["ALL", "PLAN_FILE", "POINT_FILE", "PRESETS", "Plan", "Point", "check_data"]
__all__ += ["TrainImages", "deep_set", "make_plan", "read_plan", "read_spec", "write_plan"]
__all__ += ["write_point"]

PRESETS = ("quick", "full")
POINT_FILE = "point.yaml"
PLAN_FILE = "study.yaml"


# ------------------------------------------------------------------------------ the preset
def studies_dir() -> Path:
    return configs_dir() / "studies"


def preset_file(study: str, preset: str) -> Path:
    """`quick`/`full` (configs/studies/STUDY-PRESET.yaml) or a path to a study YAML."""
    get_study(study)
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"--preset {preset}: no such file")
        return path
    path = studies_dir() / f"{study}-{preset}.yaml"
    if not path.is_file():
        have = sorted(
            p.stem.removeprefix(f"{study}-") for p in studies_dir().glob(f"{study}-*.yaml")
        )
        raise ConfigError(
            f"no {study} preset named {preset!r}; presets: {', '.join(have) or 'none'} (or a "
            "path to a study YAML file)"
        )
    return path


def deep_set(spec: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key (`families.vit.lr`) in nested mappings, creating levels as needed."""
    *heads, last = key.split(".")
    node = spec
    for h in heads:
        if not isinstance(node.get(h, {}), dict):
            raise ConfigError(f"--set {key}: {h!r} is not a mapping in the preset")
        node = node.setdefault(h, {})
    node[last] = value


def read_spec(study: str, preset: str, sets: dict[str, Any]) -> dict[str, Any]:
    """The preset with `sets` (dotted key -> value) applied: study keys in place, any other key
    into `everywhere` (TrainConfig keys for every point); every key and value checked."""
    kind = get_study(study)
    path = preset_file(study, preset)
    spec = copy.deepcopy(read_yaml(path))
    if "study" not in spec:
        raise ConfigError(f"{path} has no `study:` key; a {study} preset says `study: {study}`")
    if spec["study"] != study:
        raise ConfigError(f"{path} is a {spec['study']!r} study, not {study!r}")
    for key in spec:
        if key not in kind.all_keys:
            raise ConfigError(f"{path}: {_not_a_key(kind, str(key), train_ok=False)}")
    spec["everywhere"] = {}
    for key, value in sets.items():
        head = key.split(".", 1)[0]
        if head in kind.all_keys:
            _check_named(spec, key)
            deep_set(spec, key, value)
        elif head in TRAIN_KEYS:
            if why := per_point(head, dict(kind.reserved)):
                raise ConfigError(f"--set {key}: {why}")
            deep_set(spec["everywhere"], key, value)
        else:
            raise ConfigError(f"--set {key}: {_not_a_key(kind, head, train_ok=True)}")
    _check_spec(kind, spec)
    return spec


def _check_named(spec: dict[str, Any], key: str) -> None:
    """A key inside a named entry (`families.hybrid.lr`, `protocols.X.shots`) needs that entry
    in the preset: setting one of its keys would make a half-defined family or protocol."""
    parts = key.split(".")
    group = spec.get(parts[0])
    if len(parts) >= 3 and parts[0] in NAMED and isinstance(group, dict) and parts[1] not in group:
        have = ", ".join(map(str, group)) or "none"
        raise ConfigError(
            f"--set {key}: this preset has no {parts[0]}.{parts[1]} (it has: {have}); "
            f"add one whole with --set {parts[0]}.{parts[1]}={{model: ..., ...}}"
        )


NAMED = ("families", "protocols")  # the study keys whose entries are named by the preset


def _not_a_key(kind: Study, key: str, train_ok: bool) -> str:
    """Why `key` is refused at the top of a `kind` study's preset."""
    other = [s.name for s in STUDIES.values() if key in s.all_keys]
    if other:
        return f"{key} is a key of a {' or '.join(other)} study, not of {kind.name}"
    known = set(kind.all_keys) | (TRAIN_KEYS if train_ok else set())
    also = " nor a `vitlab train` config key" if train_ok else ""
    return (
        f"{key!r} is not a {kind.name} study key{also}{did_you_mean(key, known)}; the study "
        f"keys are {', '.join(kind.all_keys)}"
    )


def _check_spec(kind: Study, spec: dict[str, Any]) -> None:
    """The keys every study has, then the study's own (`Study.check`)."""
    if spec["study"] != kind.name:
        raise ConfigError(f"study is {kind.name}; run `vitlab study NAME` for another study")
    if "description" in spec:
        check_text("description", spec["description"])
    budget.check_budget(spec)
    reserved = {**dict(kind.reserved), **budget.reserved(spec)}
    check_train_keys("train", spec.get("train", {}), reserved)
    for key in spec.get("everywhere", {}):
        if why := per_point(key, reserved):
            raise ConfigError(f"--set {key}: {why}")
    check_seeds(spec.get("seeds", [0]))
    families = check_mapping(
        "families", spec.get("families"), "names to keys", "e.g. {vit: {model: vit_s16}}"
    )
    spec["families"] = drop_nulls(families)
    if not spec["families"]:
        raise ConfigError("families must map at least one family name to its keys; none is left")
    for name, keys in spec["families"].items():
        _check_family(kind, name, keys, reserved)
    labels = [family_label(k, v) for k, v in spec["families"].items()]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"families: two families have the same label ({', '.join(labels)})")
    kind.check(spec)


def _check_family(kind: Study, name: str, keys: Any, reserved: dict[str, str]) -> None:
    where = f"families.{name}"
    check_name("families", name)
    check_mapping(where, keys, hint="or null to drop the family")
    if "label" in keys:
        check_text(f"{where}.label", keys["label"])
    if keys.get(lr_grid.KEY) is not None:  # null: no grid
        lr_grid.check_grid(f"{where}.{lr_grid.KEY}", keys[lr_grid.KEY])
        reserved = {**reserved, **lr_grid.reserved(where)}
    for key in keys:
        other = [s.name for s in STUDIES.values() if key in s.family_keys]
        if other and key not in kind.family_keys:
            raise ConfigError(
                f"{where}.{key}: only a {' or '.join(other)} study's families take it"
            )
    own = {k: v for k, v in keys.items() if k not in (*FAMILY_KEYS, *kind.family_keys)}
    check_train_keys(where, own, reserved)


# ------------------------------------------------------------------------------ the points
def make_plan(
    study: str,
    preset: str,
    out: Path,
    sets: dict[str, Any] | None = None,
    count: Callable[[TrainConfig], int] | None = None,
) -> Plan:
    """Read the preset, apply `sets`, check every key, and expand it into points whose configs
    all validate, with their learning-rate grids and their budget: a mistake is one
    ConfigError before any point trains. `count`: how many training images a point's run
    chooses (the budget needs it where `train_images` does not say; default: `TrainImages`)."""
    spec = read_spec(study, preset, sets or {})
    kind = get_study(study)
    plan = Plan(study, preset, Path(out), spec)
    plan.points = lr_grid.add_grids(plan, kind.expand(plan), kind.off_curve)
    _check_points(plan)
    count = count or TrainImages()
    try_each(plan, lambda p: p.config.update(budget.point_budget(plan.spec, p.config, count)))
    return plan


def try_each(plan: Plan, do: Callable[[Point], None]) -> None:
    """`do` for each point; a user-facing error is said about the point (`point ID: ...`)."""
    for p in plan.points:
        try:
            do(p)
        except VitlabError as e:
            raise ConfigError(f"point {p.id}: {e}") from None


def _check_points(plan: Plan) -> None:
    """Distinct ids, and configs that validate (each replaced by its full TrainConfig)."""
    seen: set[str] = set()
    for p in plan.points:
        if p.id in seen:
            raise ConfigError(f"two points of the plan are both named {p.id}; rename a family")
        seen.add(p.id)

    def check(p: Point) -> None:
        cfg = build_config(None, p.config)
        _check_model(cfg)
        p.config = cfg.to_dict()

    try_each(plan, check)


def _check_model(cfg: TrainConfig) -> None:
    """The model name, `model_args` and `img_size` make a model config, as `fit` checks first (a
    point that loads weights is checked by the run that makes them)."""
    from vitlab.models.registry import get_config

    if not cfg.init_from:
        size = {"img_size": cfg.img_size} if cfg.img_size else {}
        get_config(cfg.model, **{**cfg.model_args, **size})


# ------------------------------------------------------------------------------ on disk
def write_plan(plan: Plan) -> None:
    """`study.yaml` (the whole plan) and each point's `point.yaml`, written atomically; a plan
    that differs from the one already in the folder is refused point by point."""
    import yaml

    from vitlab.files import write_text

    old = plan.out / PLAN_FILE
    if old.is_file():
        _check_same_plan(read_plan(plan.out), plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    write_text(old, yaml.safe_dump(plan.to_dict(), sort_keys=False))
    for p in plan.points:
        write_point(plan, p)


def write_point(plan: Plan, p: Point) -> None:
    """The point's `point.yaml`: its config, with the learning rate its grid chose once the
    grid has finished (the runner writes it again just before the point runs)."""
    import yaml

    from vitlab.files import write_text

    p.run_dir.mkdir(parents=True, exist_ok=True)
    config = lr_grid.resolved_config(plan, p)
    write_text(p.run_dir / POINT_FILE, yaml.safe_dump(config, sort_keys=False))


def read_plan(out: Path) -> Plan:
    path = Path(out) / PLAN_FILE
    if not path.is_file():
        raise ConfigError(
            f"{out} holds no study ({PLAN_FILE} is missing); point --collect at the --out "
            "folder of a study"
        )
    d = read_yaml(path)
    try:
        points = [Point.from_dict(p) for p in d.get("points", [])]
        plan = Plan(d["study"], d.get("preset", ""), Path(out), d["spec"], points)
        get_study(plan.study)
        plan.families()
    except (TypeError, KeyError, AttributeError, ConfigError) as e:
        raise ConfigError(
            f"{path} is not a study plan vitlab can read ({type(e).__name__}: {e}); plan the "
            "study again into a new --out"
        ) from None
    return plan


def _check_same_plan(old: Plan, new: Plan) -> None:
    if old.study != new.study:
        raise ConfigError(
            f"{new.out} holds a {old.study} study, not {new.study}; choose another --out"
        )
    before = {p.id: p.config for p in old.points}
    for p in new.points:
        if p.id in before and _canonical(before[p.id]) != _canonical(p.config):
            raise ConfigError(
                f"{new.out}: point {p.id} was planned with a different config there (the preset "
                "or --set changed); use another --out, or delete that folder to start over"
            )


def _canonical(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config as comparable data (tuples and lists alike), without the keys a resumed run may
    change (where the data lives, --download, threads, logging)."""
    from vitlab.train.state import RESUMABLE_CHANGES

    d = TrainConfig(**cfg).to_dict()
    return {k: v for k, v in d.items() if k not in RESUMABLE_CHANGES}


class TrainImages:
    """How many training images a run chooses (`vitlab.train.run.choose_images`), each dataset
    read once: what the budget scales with, and what `check_data` checks."""

    def __init__(self) -> None:
        self.loaded: dict[tuple, Any] = {}

    def __call__(self, c: TrainConfig) -> int:
        from vitlab.data.datasets import load_data
        from vitlab.train.run import choose_images

        key = (c.data, c.data_root, c.download, c.val_split, c.seed)
        if key not in self.loaded:
            self.loaded[key] = load_data(
                c.data, c.data_root, download=c.download, val_split=c.val_split, seed=c.seed
            )
        return len(choose_images(self.loaded[key], c).train)


def check_data(plan: Plan, count: TrainImages | None = None) -> None:
    """Every point's data exists and holds the subset it asks for (a subset larger than the
    data, k larger than a class), said before any point trains; each dataset is read once (by
    `count`, which `make_plan` may have filled already) and each point's images chosen as its
    run will choose them."""
    count = count or TrainImages()
    try_each(plan, lambda p: count(TrainConfig(**p.config)))
