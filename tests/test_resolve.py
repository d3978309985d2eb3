"""The resolve step: every automatic choice made once, and the run identity it gives."""
from __future__ import annotations

import pytest

from fadenet.config import ConfigError, load_config
from fadenet.model import backbones
from fadenet.model.network import SPP_OUT
from fadenet.resolve import resolve


def test_a_backbone_outside_the_registry_is_one_error_listing_the_registry():
    with pytest.raises(ConfigError) as error:
        resolve(load_config("smoke", "backbone=vgg16"))
    message = str(error.value)
    assert "model.backbone='vgg16'" in message
    assert all(name in message for name in backbones.backbone_choices())


def test_resolving_writes_each_choice_into_a_copy_and_leaves_the_config_alone(cfg_factory):
    cfg = cfg_factory("model.backbone=auto", "model.pretrained=none", "train.precision=auto",
                      "train.device=cpu", "data.crop=auto")
    setup = resolve(cfg)
    # without weights asked for, auto is the first backbone of the preference order
    assert setup.backbone == setup.config.model.backbone == backbones.AUTO_ORDER[0]
    assert setup.weights is False and setup.device.type == "cpu" and setup.precision in ("fp32", "bf16")
    assert setup.source == "synthetic" and setup.crop == setup.config.data.crop == "none"
    assert setup.run_folder == cfg.runs_path / setup.config.run_id()
    assert (cfg.model.backbone, cfg.train.precision, cfg.data.crop) == ("auto", "auto", "auto")


def test_resolving_twice_gives_the_same_run_and_a_resolved_config_resolves_to_itself(cfg_factory):
    cfg = cfg_factory("model.backbone=auto", "model.pretrained=none")
    first = resolve(cfg)
    assert resolve(cfg).run_folder == first.run_folder
    assert resolve(first.config).run_folder == first.run_folder


def test_the_network_is_the_configured_one_and_weights_are_loaded_only_when_resolved_so(cfg_factory):
    setup = resolve(cfg_factory("model.arch=fadenet", "model.spp=true", "model.pretrained=none"))
    net = setup.network()
    assert net.meta["backbone"] == setup.backbone and net.meta["pretrained"] == "random"
    assert net.spp is not None and net.spp.conv.out_channels == SPP_OUT


def test_every_registry_entry_builds_and_fadenet_needs_fusion_taps():
    from fadenet.config import ModelConfig
    from fadenet.model import build_model
    for name, entry in backbones.BACKBONES.items():
        model = build_model(ModelConfig(arch="baseline", backbone=name))
        assert model.head[0].in_features == entry.channels
        if not entry.fusable:
            with pytest.raises(ConfigError, match="arch='fadenet' needs backbone"):
                build_model(ModelConfig(arch="fadenet", backbone=name))


def test_a_chapter_opens_with_its_config_faces_split_and_caption_in_one_call(tmp_path, capsys):
    import fadenet
    from fadenet.data import load_split, prepare
    from fadenet.figures import provenance
    overrides = [f"data.root={tmp_path}", f"data.cache_dir={tmp_path}/cache", "data.synthetic_count=60"]
    cfg, faces, split, caption = fadenet.chapter("smoke", overrides)
    assert cfg.profile == "smoke" and cfg.data.synthetic_count == 60 and len(faces) == 60
    assert (split.train == load_split(prepare(cfg), cfg).train).all()
    assert caption == provenance(cfg, "synthetic", 60)
    assert capsys.readouterr().out == f"profile smoke; {caption}\n"
    bare = fadenet.chapter("smoke", overrides, data=False)
    assert bare.faces is None and bare.split is None and capsys.readouterr().out == "profile smoke\n"
