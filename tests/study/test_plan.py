"""The plan is checked before anything trains: every study key and value, and every `--set`,
is one line naming the key (`make_plan` raises before a point is written or trained)."""

from pathlib import Path

import pytest
import yaml

from tests.study.test_study import DATA_SCALING, MODEL_SCALING, RESNET, TRANSFER, VIT, preset
from vitlab.cli.main import main
from vitlab.errors import ConfigError
from vitlab.study.plan import make_plan

SPECS = {"data-scaling": DATA_SCALING, "transfer": TRANSFER, "model-scaling": MODEL_SCALING}
P = "protocols.five-to-five"
BAD = [
    # misspelt, unknown, and other studies' keys
    ("data-scaling", {"size": [10]}, "--set size: 'size' is not a data-scaling study key"),
    ("data-scaling", {"size": [10]}, "(did you mean sizes?)"),
    ("data-scaling", {"stesp": 10}, "nor a `vitlab train` config key (did you mean steps?)"),
    ("data-scaling", {"everywhere.lr": 1}, "'everywhere' is not a data-scaling study key"),
    ("data-scaling", {"shots": [10]}, "--set shots: shots is a key of a transfer study"),
    ("data-scaling", {"protocols.a.source.data": "digits"}, "protocols is a key of a transfer"),
    ("data-scaling", {"target.lr": 1e-3}, "target is a key of a transfer study"),
    ("transfer", {"sizes": [10]}, "sizes is a key of a data-scaling study"),
    ("model-scaling", {"shots": [10]}, "shots is a key of a transfer study"),
    # keys the study sets for every point
    ("data-scaling", {"seed": 3}, "--set seed: every point's seed comes from the study's `seeds`"),
    ("data-scaling", {"out": "x"}, "--set out: every point's run directory is OUT/points/ID"),
    ("data-scaling", {"train_images": 5}, "--set train_images: each point's training images"),
    ("data-scaling", {"train.train_images": 5}, "train.train_images cannot be set here"),
    ("data-scaling", {"families.vit.seed": 1}, "families.vit.seed cannot be set here"),
    ("transfer", {"train_per_class": 5}, "--set train_per_class: each target run's images"),
    ("transfer", {"finetune.init_from": "a.safetensors"}, "finetune.init_from cannot be set"),
    ("transfer", {f"{P}.target.train_per_class": 3}, f"{P}.target.train_per_class cannot be"),
    ("model-scaling", {"families.vit.models.d16.seed": 1}, "models.d16.seed cannot be set here"),
    # study, description
    ("data-scaling", {"study": "transfer"}, "study is data-scaling; run `vitlab study NAME`"),
    ("data-scaling", {"description": 3}, "description must be text, got 3"),
    ("data-scaling", {"description": None}, "description must be text, got None"),
    # train
    ("data-scaling", {"train": None}, "train must be a mapping of `vitlab train` config keys"),
    ("data-scaling", {"train": [1]}, "train must be a mapping"),
    ("data-scaling", {"train.foo": 1}, "train.foo: not a `vitlab train` config key"),
    ("data-scaling", {"train.stpes": 1}, "train.stpes: not a `vitlab train` config key (did you"),
    ("data-scaling", {"lr": "fast"}, "point vit-n100-s0: "),
    # families
    ("data-scaling", {"families": None}, "families must be a mapping of names to keys"),
    ("data-scaling", {"families": []}, "families must be a mapping of names to keys"),
    ("data-scaling", {"families": {}}, "families must map at least one family"),
    ("data-scaling", {"families.vit": None, "families.resnet": None}, "none is left"),
    ("data-scaling", {"families.vit": 3}, "families.vit must be a mapping of `vitlab train` co"),
    ("data-scaling", {"families.vit": "vit_s16"}, "(or null to drop the family), got 'vit_s16'"),
    ("data-scaling", {"families.vit.label": None}, "families.vit.label must be text, got None"),
    ("data-scaling", {"families.vit.label": "ResNet"}, "two families have the same label"),
    ("data-scaling", {"families.vit.foo": 1}, "families.vit.foo: not a `vitlab train` config"),
    ("data-scaling", {"families.vit.models": {"a": {}}}, "only a model-scaling study's famil"),
    ("transfer", {"families.vit.models": {"a": {}}}, "only a model-scaling study's famil"),
    ("data-scaling", {"families.a/b": VIT}, "families: 'a/b' is not a usable name"),
    ("data-scaling", {"families.vit.lr": None}, "point vit-n100-s0: "),
    # seeds
    ("data-scaling", {"seeds": None}, "seeds must be a list of whole numbers >= 0"),
    ("data-scaling", {"seeds": []}, "seeds must be a list of whole numbers >= 0"),
    ("data-scaling", {"seeds": [-1]}, "seeds must be a list of whole numbers >= 0"),
    ("data-scaling", {"seeds": [0, 0]}, "each once"),
    ("data-scaling", {"seeds": [0.5]}, "seeds must be a list"),
    ("data-scaling", {"seeds": [True]}, "seeds must be a list"),
    # sizes, shots
    ("data-scaling", {"sizes": None}, "sizes must be a list of whole numbers >= 1 (or 'all')"),
    ("data-scaling", {"sizes": []}, "sizes must be a list"),
    ("data-scaling", {"sizes": "100"}, "sizes must be a list"),
    ("data-scaling", {"sizes": [100, 100]}, "each once, got [100, 100]"),
    ("data-scaling", {"sizes": [True]}, "sizes must be a list"),
    ("data-scaling", {"sizes": ["most"]}, "sizes must be a list"),
    ("transfer", {"shots": None}, "shots must be a list"),
    ("transfer", {"shots": [0]}, "shots must be a list"),
    ("transfer", {"shots": ["all", "all"]}, "each once"),
    # transfer's protocols and stages
    ("transfer", {"protocols": None}, "protocols must be a mapping of names to sides"),
    ("transfer", {"protocols": {}}, "a transfer study needs `protocols`"),
    ("transfer", {P: None}, "none is left"),
    ("transfer", {P: 3}, f"{P} must be a mapping of sides (source, target, shots), got 3"),
    ("transfer", {f"{P}.sourse": {}}, f"{P}.sourse: a protocol takes source, target, shots"),
    ("transfer", {f"{P}.source": None}, f"{P}.source must be a mapping"),
    ("transfer", {f"{P}.source.foo": 1}, f"{P}.source.foo: not a `vitlab train` config key"),
    ("transfer", {f"{P}.shots": [0]}, f"{P}.shots must be a list"),
    ("transfer", {"protocols.a b": {}}, "protocols: 'a b' is not a usable name"),
    ("transfer", {"pretrain": None}, "pretrain must be a mapping"),
    ("transfer", {"target": 3}, "target must be a mapping"),
    ("transfer", {"finetune": "x"}, "finetune must be a mapping"),
    ("transfer", {"pretrain.foo": 1}, "pretrain.foo: not a `vitlab train` config key"),
    # the convergence budget
    ("data-scaling", {"budget": 3}, "budget must be a mapping of patience, min_epoch_steps"),
    ("data-scaling", {"budget": [5]}, "budget must be a mapping"),
    ("data-scaling", {"budget.patiense": 3}, "budget.patiense: the budget takes patience, min_ep"),
    ("data-scaling", {"budget.patience": 0}, "budget.patience must be a whole number >= 1, got 0"),
    ("data-scaling", {"budget.max_epochs": 2.5}, "budget.max_epochs must be a whole number >= 1"),
    ("data-scaling", {"budget.min_steps": True}, "budget.min_steps must be a whole number >= 1"),
    (
        "data-scaling",
        {"budget.patience": 3},
        "train.steps cannot be set here: the study's `budget`",
    ),
    ("data-scaling", {"budget": {}, "train": {}, "patience": 2}, "--set patience: the study's `bu"),
    ("data-scaling", {"budget": {}, "train": {}, "epochs": 2}, "(set budget=null to give every p"),
    (
        "data-scaling",
        {"budget": {}, "train": {}, "families.vit.steps": 9},
        "families.vit.steps cannot be set",
    ),
    (
        "data-scaling",
        {"budget": {}, "train": {}, "finetune.epoch_steps": 9},
        "finetune.epoch_steps cannot be",
    ),
    ("transfer", {"budget": {}, "target": {}}, "pretrain.steps cannot be set here: the study's `b"),
    ("transfer", {"budget": {}, "pretrain": {}}, "target.steps cannot be set here"),
    (
        "transfer",
        {"budget": {}, "pretrain": {}, "target": {}, f"{P}.source.patience": 2},
        "source.p",
    ),
    (
        "model-scaling",
        {"budget": {}, "train": {}, "families.vit.models.d16.steps": 1},
        "d16.steps c",
    ),
    # the learning-rate grids
    ("data-scaling", {"families.vit.lr_grid": [1e-3, 3e-3]}, "families.vit.lr_grid must be a map"),
    ("data-scaling", {"families.vit.lr_grid.lr": [1e-3]}, "lr_grid.lr must list at least two dif"),
    ("data-scaling", {"families.vit.lr_grid.lr": [1e-3, 1e-3]}, "at least two different learning"),
    ("data-scaling", {"families.vit.lr_grid.lr": [1e-3, 0]}, "learning rates > 0, got [0.001, 0]"),
    ("data-scaling", {"families.vit.lr_grid.lr": [1e-3, "x"]}, "at least two different learning"),
    (
        "data-scaling",
        {"families.vit.lr_grid.lrs": [1]},
        "lrs: a learning-rate grid takes lr and at",
    ),
    ("data-scaling", {"families.vit.lr_grid": {"lr": [1, 2], "at": []}}, "lr_grid.at must be a li"),
    (
        "data-scaling",
        {"families.vit.lr_grid": {"lr": [1, 2], "at": 100}},
        "lr_grid.at must be a li",
    ),
    ("data-scaling", {"families.vit.lr_grid": {"lr": [1, 2], "at": [5]}}, "at: 5 is not a point o"),
    ("model-scaling", {"families.vit.lr_grid": {"lr": [1, 2], "at": ["x"]}}, "(d16, d32)"),
    (
        "data-scaling",
        {"families.vit.lr_grid.lr": [1, 2], "families.vit.lr": 1},
        "families.vit.lr c",
    ),
    ("data-scaling", {"families.vit.lr_grid.lr": [1, 2], "families.vit.lr": 1}, "(set families.vi"),
    (
        "model-scaling",
        {"families.vit.lr_grid.lr": [1, 2], "families.vit.models.d16.lr": 1},
        "d16.lr",
    ),
    # the arm pre-trained without labels
    ("data-scaling", {"families.vit.self_supervised": 3}, "self_supervised must be a mapping of o"),
    ("data-scaling", {"families.vit.self_supervised.simclr": {}}, "the objectives are mae, mpp"),
    ("data-scaling", {"families.vit.self_supervised.mae": 3}, "self_supervised.mae must be a map"),
    ("data-scaling", {"families.vit.self_supervised.mae.objective": "mpp"}, "is the key of self_s"),
    ("data-scaling", {"families.vit.self_supervised.mae.train_images": 5}, "sees every training i"),
    ("data-scaling", {"families.vit.self_supervised.mae.train_per_class": 5}, "sees every trai"),
    ("data-scaling", {"families.vit.self_supervised.mae.foo": 5}, "mae.foo: not a `vitlab train`"),
    ("transfer", {"families.vit.self_supervised.mae.init_from": "a"}, "starts from scratch"),
    ("model-scaling", {"families.vit.self_supervised": {}}, "only a data-scaling or transfer stu"),
    ("data-scaling", {"finetune.init_from": "a.safetensors"}, "finetune.init_from cannot be set"),
    ("data-scaling", {"finetune.train_images": 5}, "finetune.train_images cannot be set here"),
    ("data-scaling", {"finetune": 3}, "finetune must be a mapping"),
    # model-scaling's models
    ("model-scaling", {"families.vit.models": None}, "families.vit.models must map each model"),
    ("model-scaling", {"families.vit.models": {}}, "families.vit.models must map each model"),
    ("model-scaling", {"families.vit.models": [16, 32]}, "families.vit.models must map each"),
    ("model-scaling", {"families.vit.models.d16": 3}, "families.vit.models.d16 must be a mapping"),
    ("model-scaling", {"families.vit.models.d16.foo": 1}, "models.d16.foo: not a `vitlab train`"),
    ("model-scaling", {"families.vit.models.a b": {}}, "families.vit.models: 'a b' is not a"),
]


@pytest.mark.parametrize(("study", "sets", "message"), BAD)
def test_every_bad_key_or_value_is_one_line_before_anything_trains(tmp_path, study, sets, message):
    with pytest.raises(ConfigError) as e:
        make_plan(study, preset(tmp_path, SPECS[study]), tmp_path / "out", sets)
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_an_unknown_key_in_the_preset_file_is_refused(tmp_path):
    path = preset(tmp_path, {**DATA_SCALING, "size": [10]})
    with pytest.raises(ConfigError, match="'size' is not a data-scaling study key"):
        make_plan("data-scaling", path, tmp_path / "out")


def test_a_family_set_to_null_is_dropped_from_the_plan(tmp_path):
    path = preset(tmp_path, DATA_SCALING)
    plan = make_plan("data-scaling", path, tmp_path / "out", {"families.resnet": None})
    assert {p.family for p in plan.points} == {"vit"} and list(plan.families()) == ["vit"]
    shipped = make_plan("data-scaling", "quick", tmp_path / "out", {"families.hybrid": None})
    assert {p.family for p in shipped.points} == {"vit", "resnet"}


def test_a_protocol_set_to_null_is_dropped_and_a_null_model_is_the_family_as_it_is(tmp_path):
    plan = make_plan("transfer", "quick", tmp_path / "out", {"protocols.fashion-to-digits": None})
    assert {p.protocol for p in plan.points} == {"fashion5-to-fashion5"}
    sets = {"families.vit.models.d32": None}
    plan = make_plan("model-scaling", preset(tmp_path, MODEL_SCALING), tmp_path / "o", sets)
    assert [p.x for p in plan.points if p.family == "vit"] == ["d16", "d32"]


def test_dropping_a_family_from_the_command_line_works(tmp_path, capsys):
    spec = {**DATA_SCALING, "families": {"vit": VIT, "resnet": RESNET, "hybrid": VIT}}
    spec["families"]["hybrid"] = {**VIT, "label": "hybrid"}
    argv = ["study", "data-scaling", "--preset", preset(tmp_path, spec), "--print-commands"]
    code = main([*argv, "--set", "families.hybrid=null", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err and len(out.splitlines()) == 4 and "hybrid" not in out


@pytest.mark.parametrize(
    ("value", "message"),
    [("3", "families.hybrid must be a mapping"), ("[a,b]", "or null to drop the family")],
)
def test_a_family_that_is_not_a_mapping_is_one_line(tmp_path, capsys, value, message):
    argv = ["study", "data-scaling", "--preset", preset(tmp_path, DATA_SCALING)]
    code = main([*argv, "--set", f"families.hybrid={value}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not Path(tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"families.vit.model": "vit_nope"}, "point vit-n100-s0: unknown model 'vit_nope'"),
        ({"families.vit.model_args.depht": 3}, "unknown ViTConfig field(s): depht"),
        ({"families.resnet.model_args.layers": 3}, "point resnet-n100-s0: "),
        ({"img_size": 13}, "img_size=13 is not divisible by patch_size=4"),
    ],
)
def test_a_bad_model_is_refused_by_the_plan_not_by_its_run(tmp_path, sets, message):
    with pytest.raises(ConfigError) as e:
        make_plan("data-scaling", preset(tmp_path, DATA_SCALING), tmp_path / "out", sets)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_preset_without_its_study_key_says_so(tmp_path):
    spec = {k: v for k, v in DATA_SCALING.items() if k != "study"}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="has no `study:` key; a data-scaling preset says"):
        make_plan("data-scaling", str(path), tmp_path / "out")


@pytest.mark.parametrize(
    "text", ["study: data-scaling\n", "study: nope\nspec: {}\n", "study: data-scaling\nspec: 3\n"]
)
def test_collect_of_a_damaged_plan_is_one_line(tmp_path, capsys, text):
    (tmp_path / "study.yaml").write_text(text)
    assert main(["study", "data-scaling", "--collect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a study plan vitlab can read" in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
