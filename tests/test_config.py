"""The typed configuration: profiles, key=value and YAML overrides, validation, run ids, saving."""
from __future__ import annotations

import dataclasses
import os

import pytest
import yaml

from fadenet.config import RECIPES, Config, ConfigError, config_from_dict, load_config, profiles, read_recipe


@pytest.fixture(autouse=True)
def _no_profile_env(monkeypatch):
    monkeypatch.delenv("FADENET_PROFILE", raising=False)


# ---- profiles ---------------------------------------------------------------------------------
@pytest.mark.parametrize("profile,size,source,pretrained,tta", [
    ("smoke", 64, "auto", "none", "flip"),
    ("quick", 96, "auto", "auto", "flip"),
    ("reference", 112, "auto", "auto", "multi"),
    ("paper", 224, "afad", "imagenet", "multi"),
])
def test_profiles_resolve(profile, size, source, pretrained, tta):
    cfg = load_config(profile)
    assert cfg.profile == profile
    assert (cfg.data.size, cfg.data.source, cfg.model.pretrained, cfg.eval.tta) == (size, source, pretrained, tta)


def test_profiles_differ_where_their_recipes_say():
    smoke, quick, reference, paper = (load_config(p) for p in ("smoke", "quick", "reference", "paper"))
    assert profiles() == ["paper", "quick", "reference", "smoke"]  # one recipe file each, under configs/
    assert smoke.train.epochs == 1 and smoke.data.subset > 0
    assert quick.model.backbone == "auto" and quick.train.epochs == 2 and quick.eval.seeds == (42,)
    assert (reference.eval.ablation_budget, len(reference.eval.seeds), reference.eval.kfold) == (1.0, 3, True)
    assert paper.train.epochs == Config().train.epochs == 120  # the paper's recipe is the default
    assert (paper.loss.lds, paper.train.mixup_prob) == (True, 0.5)
    assert (quick.loss.lds, quick.train.mixup_prob) == (False, 0.0)
    assert paper.data.subset == 0


def test_unknown_profile_is_an_error():
    with pytest.raises(ConfigError, match="profile"):
        load_config("tiny")


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("FADENET_PROFILE", "smoke")
    assert load_config().profile == "smoke"
    assert load_config().data.size == 64
    assert load_config("paper").profile == "paper"  # an explicit profile wins
    monkeypatch.delenv("FADENET_PROFILE")
    assert load_config().profile == "quick"


def test_bad_profile_in_environment(monkeypatch):
    monkeypatch.setenv("FADENET_PROFILE", "nonsense")
    with pytest.raises(ConfigError, match="nonsense"):
        load_config()


# ---- key=value overrides ------------------------------------------------------------------------
def test_dotted_and_bare_keys_with_types():
    cfg = load_config("smoke", "train.epochs=3", "lr=0.01", "data.size=96", "dropout=0.5",
                      "model.ca=false", "spp=no", "lds=off", "augment=1", "eval.scales=0.9,1.0",
                      "seeds=(1, 2, 3)", "backbone=resnet18", "runs_dir=/tmp/x")
    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int
    assert cfg.train.lr == 0.01 and type(cfg.train.lr) is float
    assert cfg.data.size == 96 and type(cfg.data.size) is int
    assert cfg.model.dropout == 0.5
    assert cfg.model.ca is False and cfg.model.spp is False and cfg.loss.lds is False
    assert cfg.train.augment is True
    assert cfg.eval.scales == (0.9, 1.0) and isinstance(cfg.eval.scales, tuple)
    assert cfg.eval.seeds == (1, 2, 3) and all(type(s) is int for s in cfg.eval.seeds)
    assert cfg.model.backbone == "resnet18"
    assert cfg.runs_dir == "/tmp/x"


@pytest.mark.parametrize("text,value", [
    ("true", True), ("True", True), ("YES", True), ("on", True), ("1", True),
    ("false", False), ("No", False), ("OFF", False), ("0", False),
])
def test_bool_spellings(text, value):
    start = load_config("smoke", f"model.msff={not value}")
    assert start.model.msff is (not value)
    assert start.override(f"model.msff={text}").model.msff is value


def test_int_accepts_integral_float_text_and_dicts_override():
    assert load_config("smoke", "epochs=4.0").train.epochs == 4
    cfg = load_config("smoke", {"train.batch_size": 16, "hidden": "256"})
    assert (cfg.train.batch_size, cfg.model.hidden) == (16, 256)


def test_later_overrides_win():
    assert load_config("smoke", "epochs=2", "train.epochs=7").train.epochs == 7


@pytest.mark.parametrize("item,key", [
    ("train.nonsense=1", "train.nonsense"),
    ("nonsense=1", "nonsense"),
    ("bogus.epochs=1", "bogus.epochs"),
    ("seed=7", "seed"),                   # in data and in train
    ("epochs=three", "epochs"),
    ("epochs=2.5", "epochs"),
    ("lr=fast", "lr"),
    ("model.ca=maybe", "model.ca"),
    ("eval.seeds=1,x", "eval.seeds"),
    ("data.size=16", "data.size"),
    ("data.size=1024", "data.size"),
    ("size=0", "data.size"),
    ("data.fold=5", "data.fold"),
    ("fold=-1", "data.fold"),
    ("dropout=1.0", "model.dropout"),
    ("model.dropout=-0.1", "model.dropout"),
    ("data.source=foo", "data.source"),
    ("data.split=50-25-25", "data.split"),
    ("crop=tight", "data.crop"),
    ("tta=sometimes", "eval.tta"),
    ("train.batch_size=0", "train.batch_size"),
    ("lr=0", "train.lr"),
    ("epochs=-1", "train.epochs"),
    ("profile=huge", "profile"),
])
def test_bad_overrides_raise_naming_the_key(item, key):
    with pytest.raises(ConfigError) as info:
        load_config("smoke", item)
    assert key in str(info.value)


def test_ambiguous_key_lists_the_choices():
    with pytest.raises(ConfigError) as info:
        load_config("smoke", "seed=7")
    assert "data.seed" in str(info.value) and "train.seed" in str(info.value)
    cfg = load_config("smoke", "data.seed=7", "train.seed=8")
    assert (cfg.data.seed, cfg.train.seed) == (7, 8)


@pytest.mark.parametrize("item", ["epochs", "=3", "  =3"])
def test_malformed_override(item):
    with pytest.raises(ConfigError, match="key=value"):
        load_config("smoke", item)


@pytest.mark.parametrize("item,key", [("data.subset=-1", "data.subset"),
                                      ("data.synthetic_count=0", "data.synthetic_count")])
def test_negative_subset_and_empty_synthetic_set_are_config_errors(item, key):
    with pytest.raises(ConfigError) as info:
        load_config("smoke", item)
    assert key in str(info.value)


def test_nan_learning_rate_is_rejected():
    with pytest.raises(ConfigError, match="train.lr"):
        load_config("smoke", "train.lr=nan")


# ---- YAML files ---------------------------------------------------------------------------------
def test_yaml_file_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 9, "lr": 0.005}, "data": {"size": 80},
                                    "eval": {"scales": [0.8, 1.2]}, "dropout": 0.2}))
    cfg = load_config("smoke", file=path)
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.size, cfg.model.dropout) == (9, 0.005, 80, 0.2)
    assert cfg.eval.scales == (0.8, 1.2) and isinstance(cfg.eval.scales, tuple)
    assert cfg.train.batch_size == load_config("smoke").train.batch_size == 32  # rest from the profile
    # key=value overrides come after the file
    assert load_config("smoke", "epochs=2", file=path).train.epochs == 2


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("smoke", file=tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config("smoke", file=listed)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="train.epochz"):
        load_config("smoke", file=bad)
    out_of_range = tmp_path / "range.yaml"
    out_of_range.write_text("data:\n  fold: 7\n")
    with pytest.raises(ConfigError, match="data.fold"):
        load_config("smoke", file=out_of_range)


# ---- run ids and saving -------------------------------------------------------------------------
def test_run_id_tracks_training_relevant_fields():
    base = load_config("smoke").run_id()
    assert load_config("smoke").run_id() == base
    for change in ("train.lr=0.002", "model.dropout=0.1", "data.size=96", "data.split=90-5-5",
                   "loss.rank_weight=0.5", "model.msff=false", "train.epochs=2", "data.seed=1"):
        assert load_config("smoke", change).run_id() != base, change
    assert "s7" in load_config("smoke", "train.seed=7").run_id()


def test_run_id_ignores_where_and_how_fast():
    base = load_config("smoke").run_id()
    for change in ("data.workers=7", "runs_dir=/somewhere/else", "data.cache_dir=/tmp/c",
                   "train.threads=3", "train.device=cpu", "eval.tta=multi", "bench.repeats=9",
                   "train.channels_last=false", "train.fused_adamw=false", "train.processes=2"):
        assert load_config("smoke", change).run_id() == base, change


def test_identity_is_every_field_not_marked_as_speed_or_place():
    identity = load_config("smoke").identity()
    assert set(identity) == {"data", "model", "loss", "train"}  # eval and bench change no training run
    assert set(identity["train"]) == {f.name for f in dataclasses.fields(load_config("smoke").train)} - {
        "compile", "processes", "fused_adamw", "sync_bn", "threads", "channels_last", "device",
        "schedule", "aug_strength", "sizes", "ema_warmup"}  # added later: named only when set (next test)
    assert "workers" not in identity["data"] and "cache_dir" not in identity["data"] and "root" in identity["data"]


def test_fields_added_later_leave_earlier_run_ids_alone():
    # the ids these profiles had before train.schedule, aug_strength and sizes existed
    assert load_config("smoke").run_id() == "smoke-fadenet-mobilenet_v3_large-s42-dfebeb11"
    # the reference profile before chapter 03 chose its new recipe: the shortened paper recipe
    old_reference = load_config("reference", file=RECIPES / "short_paper.yaml")
    assert old_reference.run_id() == "reference-fadenet-auto-s42-6de62c74"
    for key, value, stored in (("schedule", "linear", "linear"), ("aug_strength", "0.5", 0.5),
                               ("sizes", "48,64", [48, 64])):
        changed = load_config("smoke", f"train.{key}={value}")
        assert changed.run_id() != "smoke-fadenet-mobilenet_v3_large-s42-dfebeb11", key
        assert changed.identity()["train"][key] == stored
    # set back to the value that behaves as before: the earlier run again
    assert load_config("smoke", "train.schedule=cosine", "train.sizes=").run_id() == \
        "smoke-fadenet-mobilenet_v3_large-s42-dfebeb11"


def test_a_profile_takes_its_recipe_file_and_its_own_keys_win():
    cpu = read_recipe("cpu_budget")
    reference = load_config("reference")
    assert reference.train.schedule == cpu["train.schedule"] and reference.train.aug_strength == cpu["train.aug_strength"]
    assert reference.train.epochs == 4  # the profile's own key
    with pytest.raises(ConfigError, match="recipe 'nope'"):
        read_recipe("nope")


def test_integer_tuples_stay_integers_and_sizes_are_checked():
    assert load_config("smoke", "train.sizes=48,64").train.sizes == (48, 64)
    assert all(isinstance(v, int) for v in load_config("smoke", "train.sizes=48,64").train.sizes)
    with pytest.raises(ConfigError, match="train.sizes"):
        load_config("smoke", "train.sizes=48,96")  # larger than data.size 64
    with pytest.raises(ConfigError, match="train.schedule"):
        load_config("smoke", "train.schedule=step")


def test_save_round_trips_through_yaml(tmp_path):
    cfg = load_config("quick", "epochs=3", "eval.scales=0.8,1.0", "model.ca=false", "data.seed=5")
    path = tmp_path / "sub" / "config.yaml"
    cfg.save(path)
    assert path.is_file() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    loaded = yaml.safe_load(path.read_text())
    assert loaded["train"]["epochs"] == 3 and loaded["profile"] == "quick"
    again = config_from_dict(loaded)
    assert again == cfg
    assert isinstance(again.eval.scales, tuple)
    assert again.run_id() == cfg.run_id()
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_saved_config_has_ordinary_permissions(tmp_path):
    """Atomic writes go through a temporary file; the result still follows the umask (not 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    load_config("smoke").save(tmp_path / "config.yaml")
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_config_saved_by_an_older_version_still_loads():
    saved = load_config("quick").to_dict()
    saved["train"]["amp"] = True          # the key train.precision replaced
    del saved["train"]["precision"]
    saved["eval"]["bench_repeats"] = 7     # the speed benchmark's settings became the bench section
    cfg = config_from_dict(saved)
    assert cfg.train.precision == "auto" and cfg.train.epochs == 2 and cfg.bench.repeats == 10


def test_shown_paths_name_no_folder_of_this_machine(tmp_path, monkeypatch):
    from fadenet.config import ROOT
    from fadenet.io import shown_path
    monkeypatch.setenv("FADENET_DATA_ROOT", str(tmp_path / "datasets"))
    cfg = load_config("smoke")
    assert cfg.shown(ROOT / "runs" / "x" / "best.pt") == "runs/x/best.pt"
    assert cfg.shown(tmp_path / "datasets" / "AFAD-Full") == "$FADENET_DATA_ROOT/AFAD-Full"
    assert load_config("smoke", f"data.root={tmp_path}").shown(tmp_path / "a") == "<data.root>/a"
    assert cfg.shown("/elsewhere/file") == "/elsewhere/file"  # outside both: the path itself
    assert shown_path(tmp_path / "hub" / "w.pth", [("$TORCH_HOME/hub", tmp_path / "hub")]) == "$TORCH_HOME/hub/w.pth"


def test_replaced_returns_a_changed_copy_and_leaves_the_config_as_it_was():
    cfg = load_config("smoke")
    other = cfg.replaced({"train.epochs": 7}, "train.seed=3")
    assert (other.train.epochs, other.train.seed) == (7, 3)
    assert (cfg.train.epochs, cfg.train.seed) == (1, 42) and other is not cfg
