"""The training configuration: presets carry the paper's values, YAML round trips, dotted overrides are
typed from the dataclass fields, and bad keys or values fail with a message naming the key."""
import dataclasses
import math

import pytest
import torch

from imm_ext.train import (TRAINING_PRESETS, ConfigError, TrainingConfig, apply_overrides, config_from_dict,
                           dump_config, get_preset, load_config, parse_config)
from imm_ext.method.flow_matching import FlowMatchingLoss
from imm_ext.train.config import FP16_MIN_GAP, with_precision_defaults
from imm_ext.train.methods import training_method


@pytest.mark.parametrize("name", sorted(TRAINING_PRESETS))
def test_every_preset_validates_and_round_trips_through_yaml(name, tmp_path):
    preset = get_preset(name).validate()
    assert parse_config(dump_config(preset)) == preset
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(preset))
    assert load_config(path) == preset


def test_table5_values_in_the_presets():
    cifar = get_preset("cifar10")
    assert (cifar.optimizer.name, cifar.optimizer.lr, cifar.optimizer.betas, cifar.optimizer.eps,
            cifar.optimizer.weight_decay) == ("radam", 1e-4, (0.9, 0.999), 1e-8, 0.0)
    assert (cifar.train.batch_size, cifar.method.particles, cifar.train.steps, cifar.train.ema_decay) == (4096, 4, 400_000, 0.9999)
    assert (cifar.method.f_type, cifar.method.k, cifar.method.eps_t, cifar.method.b, cifar.data.hflip) == ("simple_edm", 15, 0.006, 5.0, True)
    assert cifar.model.kind == "unet" and cifar.model.options["dropout"] == 0.2
    for variant, dit in (("S", "S/2"), ("B", "B/2"), ("L", "L/2"), ("XL", "XL/2")):
        imagenet = get_preset(f"imagenet256-latent-{variant}")
        assert imagenet.model.preset == dit and imagenet.optimizer.name == "adamw"
        assert (imagenet.train.steps, imagenet.method.k, imagenet.method.label_dropout, imagenet.method.guidance) == (1_200_000, 12, 0.1, 1.5)
    headline = get_preset("imagenet256-latent-XL-fp16")
    assert (headline.train.precision, headline.method.time_embedding, headline.method.delta, headline.method.a) == ("fp16", "stride", 1e-4, 2.0)


def test_overrides_are_typed_from_the_fields():
    config = apply_overrides(get_preset("digits"), [
        "train.batch_size=512", "optimizer.lr=3e-4", "optimizer.betas=0.8,0.95", "eval.steps=[1, 2]",
        "optimizer.grad_clip=none", "data.hflip=true", "log.name=007", "method.kind=flow_matching",
        "model.options.hidden_size=32", "method.mid_eta=1.5"])
    assert config.train.batch_size == 512 and isinstance(config.train.batch_size, int)
    assert config.optimizer.lr == 3e-4 and config.optimizer.betas == (0.8, 0.95)
    assert config.eval.steps == (1, 2) and config.optimizer.grad_clip is None and config.data.hflip is True
    assert config.log.name == "007" and config.method.kind == "flow_matching"
    assert config.model.options["hidden_size"] == 32 and config.method.mid_eta == (1.5,)
    assert get_preset("digits").model.options["hidden_size"] != 32  # the preset itself is untouched


@pytest.mark.parametrize("override, message", [
    ("train.batchsize=4", "unknown config key 'train.batchsize'; did you mean 'batch_size'"),
    ("nosuch.key=1", "unknown config key 'nosuch'"),
    ("train.batch_size=abc", "train.batch_size: must be an integer"),
    ("data.hflip=maybe", "data.hflip: must be true or false"),
    ("optimizer.betas=0.9", "optimizer.betas: must hold 2 values"),
    ("train=3", "train: is a section"),
    ("train.steps", "must have the form section.key=value"),
    ("train.steps.x=1", "train.steps.x: 'train.steps' is a single value"),
])
def test_bad_override_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(get_preset("toy2d"), [override])


@pytest.mark.parametrize("override, key", [
    ("train.batch_size=6", "train.batch_size"),  # not a multiple of M = 4
    ("train.micro_batch=6", "train.micro_batch"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.name=sgd", "optimizer.name"),
    ("train.precision=fp8", "train.precision"),
    ("train.ema_decay=1", "train.ema_decay"),
    ("method.kind=gan", "method.kind"),
    ("method.k=99", "method"),
    ("method.weighting=uniform", "method.weighting"),
    ("eval.steps=0", "eval.steps[0]"),
    ("eval.guidance=1.5", "eval.guidance"),  # an unconditional model cannot be guided
    ("log.name=a/b", "log.name"),
])
def test_bad_values_fail_validation_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key.replace('[', '.').replace(']', '.')}"):
        apply_overrides(get_preset("toy2d"), [override]).validate()


def test_yaml_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown config key 'optimizer.learning_rate'"):
        config_from_dict({"optimizer": {"learning_rate": 1e-3}})
    with pytest.raises(ConfigError, match="train.steps: must be an integer"):
        parse_config("train:\n  steps: [1, 2]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("train: [\n")


def test_yaml_file_applies_on_top_of_a_preset(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("train:\n  steps: 7\nmethod:\n  k: 11\n")
    config = load_config(path, base=get_preset("toy2d"))
    assert config.train.steps == 7 and config.method.k == 11
    assert config.data == get_preset("toy2d").data


def test_fp16_gets_the_minimum_gap():
    config = with_precision_defaults(apply_overrides(get_preset("digits"), ["train.precision=fp16"]))
    assert config.method.delta == FP16_MIN_GAP
    assert with_precision_defaults(get_preset("digits")).method.delta == 0
    assert dataclasses.replace(TrainingConfig()).validate() == TrainingConfig()


def test_flow_matching_reads_the_network_as_euler_fm():
    """The digits recipe trains IMM with Simple-EDM; its flow-matching baseline trains the same network
    as an Euler-FM velocity on the "fm" path."""
    method = apply_overrides(get_preset("digits"), ["method.kind=flow_matching"]).validate().method
    assert training_method(get_preset("digits").method).preset.f_type == "simple_edm"
    flow_matching = training_method(method)
    assert flow_matching.preset.f_type == "euler_fm" and flow_matching.preset.schedule == "fm"
    assert isinstance(method.loss(), FlowMatchingLoss) and flow_matching.group_size == 1
    with pytest.raises(ConfigError, match="method.schedule"):
        apply_overrides(get_preset("digits"), ["method.kind=flow_matching", "method.schedule=vp_cosine"]).validate()


def test_the_weighting_can_be_switched_off():
    """method.weighting=none trains with w(s, t) = 1, the first row of the paper's Table 4 ablation."""
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    plain = apply_overrides(get_preset("digits"), ["method.weighting=none"]).validate().method.loss()
    assert torch.equal(plain.weighting(t), torch.ones_like(t))
    weighted = get_preset("digits").method.loss()
    assert not torch.allclose(weighted.weighting(t), torch.ones_like(t))


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_the_learning_rate_warms_up_then_follows_its_schedule_to_the_last_update(schedule):
    from imm_ext.train.components import learning_rate

    config = dataclasses.replace(get_preset("digits").optimizer, lr=1e-3, warmup_steps=10, schedule=schedule,
                                 final_lr_fraction=0.1)
    rates = [learning_rate(config, step, 110) for step in range(110)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3) and rates[10] == pytest.approx(1e-3)
    if schedule == "constant":
        assert rates[10:] == [1e-3] * 100
    else:
        assert rates[-1] == pytest.approx(1e-4)
        assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
        middle = rates[10] * 0.55  # halfway: the mean of lr and its final value, for both shapes
        assert learning_rate(config, 10 + 99 / 2, 110) == pytest.approx(middle)
        quarter = learning_rate(config, 10 + 99 / 4, 110) / 1e-3
        assert quarter == pytest.approx(0.1 + 0.9 * (0.5 + 0.5 * math.cos(math.pi / 4)) if schedule == "cosine"
                                        else 0.1 + 0.9 * 0.75)


def test_a_schedule_and_final_fraction_out_of_range_are_named():
    with pytest.raises(ConfigError, match="optimizer.schedule"):
        apply_overrides(get_preset("digits"), ["optimizer.schedule=step"]).validate()
    with pytest.raises(ConfigError, match="optimizer.final_lr_fraction"):
        apply_overrides(get_preset("digits"), ["optimizer.final_lr_fraction=1.5"]).validate()
