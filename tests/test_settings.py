"""openmm_geom.settings: help text in fields, nested overrides, options derived from fields."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Sequence

import pytest

from openmm_geom.settings import (add_options, option_flag, override, overrides_from, setting,
                                  setting_fields)


@dataclasses.dataclass
class Inner:
    epochs: int = setting(30, help="most epochs")
    learning_rate: float = setting(1e-3, help="step size")
    max_frames: Optional[int] = setting(None, help="frames per epoch; none: all")
    seed: int = setting(0, help="set per run", cli=False)

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")


@dataclasses.dataclass
class Outer:
    replicas: int = setting(100, help="independent replicas", stage="simulate")
    temperature_K: float = setting(300.0, help="temperature, K", stage="simulate")
    integrator: str = setting("baoab", help="integrator", choices=("baoab", "overdamped"),
                              stage="simulate")
    repulsion: bool = setting(True, help="add walls", stage="train")
    weights: Sequence[float] = setting((0.1, 1.0), help="loss weights", stage="train")
    options: dict = setting({}, help="free-form options")
    training: Inner = setting(Inner(epochs=5), help="training", stage="train")


@dataclasses.dataclass
class Twice:
    k: int = setting(2, help="outer k")
    inner: Outer = setting(Outer(), help="nested")
    other: Inner = setting(Inner(), help="a second Inner: its fields are ambiguous")


def parse(cls, argv, **options):
    parser = argparse.ArgumentParser(prog="test")
    add_options(parser, cls, **options)
    return parser, parser.parse_args(argv)


# ------------------------------------------------------------------------------ setting
def test_setting_stores_help_and_copies_mutable_defaults():
    a, b = Outer(), Outer()
    assert a.training == Inner(epochs=5) and a.training is not b.training
    a.options["x"] = 1
    assert b.options == {}
    fields = {f.name: f for f in setting_fields(Outer)}
    assert fields["replicas"].help == "independent replicas"
    assert fields["integrator"].choices == ("baoab", "overdamped")
    # nested fields inherit their holder's stage; cli=False is kept
    assert fields["epochs"].path == ("training", "epochs") and fields["epochs"].stage == "train"
    assert fields["seed"].cli is False
    with pytest.raises(TypeError, match="not both"):
        setting(1, default_factory=int, help="x")


# ----------------------------------------------------------------------------- override
def test_override_reaches_into_nested_settings():
    base = Outer()
    changed = override(base, epochs=2, replicas=4, max_frames=300)
    assert changed.training == Inner(epochs=2, max_frames=300)
    assert changed.replicas == 4
    assert base.training.epochs == 5 and base.replicas == 100  # the original is unchanged
    assert changed.training.learning_rate == base.training.learning_rate
    whole = override(base, training=Inner(epochs=7, learning_rate=0.5), epochs=9)
    assert whole.training == Inner(epochs=9, learning_rate=0.5)  # replaced, then changed
    assert override(base, **{"training.epochs": 3}).training.epochs == 3
    assert override(base) == base and override(base) is not base


def test_override_refuses_unknown_and_ambiguous_names():
    with pytest.raises(TypeError, match="has no setting 'epoch'.*epochs"):
        override(Outer(), epoch=3)
    with pytest.raises(TypeError, match="no setting 'training.nothing'"):
        override(Outer(), **{"training.nothing": 3})
    with pytest.raises(ValueError, match="'epochs' is ambiguous in Twice.*'inner.training."
                                         "epochs', 'other.epochs'"):
        override(Twice(), epochs=3)
    assert override(Twice(), **{"other.epochs": 3}).other.epochs == 3
    assert override(Twice(), k=5).k == 5  # only at the top level: not ambiguous
    with pytest.raises(ValueError, match="epochs must be >= 1"):  # __post_init__ runs
        override(Outer(), epochs=0)
    with pytest.raises(TypeError, match="settings instance"):
        override(Outer, epochs=1)


# -------------------------------------------------------------------------- add_options
def test_flags_types_help_and_defaults_come_from_the_fields():
    parser, args = parse(Outer, [])
    help_text = parser.format_help()
    for flag in ("--replicas", "--temperature-k", "--integrator", "--repulsion",
                 "--no-repulsion", "--weights", "--epochs", "--learning-rate",
                 "--max-frames"):
        assert flag in help_text, flag
    assert "--seed" not in help_text and "--options" not in help_text  # cli=False, a dict
    assert "independent replicas (default: 100)" in help_text
    assert "step size (default: 0.001)" in help_text
    assert "(default: none)" in help_text
    # nothing given: every option is None and nothing is overridden
    assert all(getattr(args, name) is None for name in ("replicas", "temperature_K",
                                                         "repulsion", "epochs", "max_frames"))
    assert overrides_from(args, Outer) == {}

    _, args = parse(Outer, ["--replicas", "4", "--temperature-k", "310.5", "--integrator",
                            "overdamped", "--no-repulsion", "--weights", "1", "2",
                            "--epochs", "3", "--max-frames", "none"])
    given = overrides_from(args, Outer)
    assert given == {"replicas": 4, "temperature_K": 310.5, "integrator": "overdamped",
                     "repulsion": False, "weights": (1.0, 2.0), "epochs": 3,
                     "max_frames": None}
    assert isinstance(given["replicas"], int) and isinstance(given["temperature_K"], float)
    settings = override(Outer(), **given)
    assert settings.training.epochs == 3 and settings.training.max_frames is None
    assert settings.repulsion is False and settings.weights == (1.0, 2.0)
    _, args = parse(Outer, ["--max-frames", "12"])
    assert override(Outer(), **overrides_from(args, Outer)).training.max_frames == 12


def test_bad_values_are_refused_by_the_parser(capsys):
    for argv in (["--replicas", "4.5"], ["--integrator", "leapfrog"],
                 ["--max-frames", "many"]):
        with pytest.raises(SystemExit):
            parse(Outer, argv)
    assert "invalid choice: 'leapfrog'" in capsys.readouterr().err


def test_defaults_instance_and_alternatives_in_the_help():
    quick = override(Outer(), replicas=4, epochs=1)
    parser, _ = parse(Outer, [], defaults=Outer(), also={"--quick": quick})
    text = " ".join(parser.format_help().split())
    assert "independent replicas (default: 100; --quick: 4)" in text
    assert "temperature, K (default: 300.0)" in text  # same under --quick: not repeated
    assert "add walls (default: yes)" in text


def test_stages_include_exclude_required():
    parser, _ = parse(Outer, [], stages=["simulate"])
    text = parser.format_help()
    assert "--replicas" in text and "--epochs" not in text and "--repulsion" not in text
    parser, _ = parse(Outer, [], include=["epochs", "replicas"])
    text = parser.format_help()
    assert "--epochs" in text and "--replicas" in text and "--integrator" not in text
    parser, _ = parse(Outer, [], exclude=["epochs"])
    assert "--epochs" not in parser.format_help()
    with pytest.raises(SystemExit):
        parse(Outer, [], required=["replicas"])
    assert parse(Outer, ["--replicas", "2"], required=["replicas"])[1].replicas == 2
    with pytest.raises(ValueError, match="not options here"):
        parse(Outer, [], stages=["simulate"], required=["epochs"])
    with pytest.raises(ValueError, match="no command-line setting 'nope'"):
        parse(Outer, [], include=["nope"])
    with pytest.raises(TypeError, match="no command-line form"):
        parse(Outer, [], include=["options"])
    with pytest.raises(ValueError, match="no setting"):
        parse(Outer, [], exclude=["nope"])


@dataclasses.dataclass
class Shared:
    steps: int = setting(10, help="steps", stage="simulate")
    fast: bool = setting(False, help="go fast", stage=("train", "simulate"))
    bins: int = setting(5, help="bins", stage="evaluate")


def test_a_field_may_belong_to_several_stages():
    assert {f.name: f for f in setting_fields(Shared)}["fast"].stage == ("train", "simulate")
    for stages, shown in ((["train"], True), (["simulate"], True), ("simulate", True),
                          (["evaluate"], False), (None, True)):
        parser, _ = parse(Shared, [], stages=stages)
        assert ("--fast" in parser.format_help()) is shown, stages
    _, args = parse(Shared, ["--fast"], stages=["train"])
    assert override(Shared(), **overrides_from(args, Shared)).fast is True


def test_a_name_at_two_levels_needs_an_exclusion_and_then_works():
    with pytest.raises(ValueError, match="two settings named 'epochs'"):
        parse(Twice, [])
    _, args = parse(Twice, ["--k", "3", "--replicas", "2"], include=["k", "replicas"])
    assert overrides_from(args, Twice) == {"k": 3, "replicas": 2}
    assert override(Twice(), **overrides_from(args, Twice)).inner.replicas == 2


def test_only_options_made_by_add_options_are_read():
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int)  # hand-written, not a settings option
    args = parser.parse_args(["--replicas", "3"])
    assert overrides_from(args, Outer) == {}
    assert option_flag("temperature_K") == "--temperature-k"
    assert option_flag("height_kJmol") == "--height-kjmol"


def test_subcommands_register_their_own_options():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_options(sub.add_parser("simulate"), Outer, stages=["simulate"])
    add_options(sub.add_parser("train"), Outer, stages=["train"])
    args = parser.parse_args(["train", "--epochs", "2"])
    assert overrides_from(args, Outer) == {"epochs": 2}
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--replicas", "2"])


# ----------------------------------------------------------------- the package's settings
def test_package_settings_have_help_and_build_options():
    from openmm_geom.training.energy_force import EnergyForceConfig
    from openmm_geom.training.force_matching import TrainConfig
    from openmm_geom.training.signature_classifier import TrainingSettings
    from openmm_geom.training.vamp import VAMPNetTrainer
    from openmm_geom.workflows import coarse_grain, cv, cv_bias, potential

    classes = (coarse_grain.CGSettings, potential.PotentialSettings, cv_bias.BiasSettings,
               cv.ReproduceSettings, cv.ExploreSettings, cv.VampSettings, TrainingSettings,
               EnergyForceConfig, TrainConfig, VAMPNetTrainer)
    for cls in classes:
        missing = [".".join(f.path) for f in setting_fields(cls) if not f.help]
        assert not missing, f"{cls.__name__} fields without help: {missing}"
        add_options(argparse.ArgumentParser(), cls)  # no two options of one name


def test_job_settings_hold_their_training_config():
    from openmm_geom.workflows import coarse_grain as cg
    from openmm_geom.workflows import potential

    assert cg.PRODUCTION.training.epochs == 30 and cg.PRODUCTION.training.batch_size == 64
    assert cg.QUICK.training.folds == 2 and cg.QUICK.training.max_train_frames == 4000
    assert cg.PRODUCTION.timestep_fs == 2.0
    quick = override(cg.QUICK, epochs=2, folds=3, steps=10)
    assert (quick.training.epochs, quick.training.folds, quick.steps) == (2, 3, 10)
    production = potential.budget("production", "et")
    assert production.architecture == "et" and production.training.epochs == 12
    assert production.training.max_train_frames == 400
    assert potential.budget("quick", "attention").training.max_train_frames == 16


def test_the_command_line_options_are_the_settings_fields():
    from openmm_geom.cli import build_parser
    from openmm_geom.workflows import coarse_grain as cg
    from openmm_geom.workflows import cv, cv_bias

    parser = build_parser()
    args = parser.parse_args(["cg", "reproduce", "--train", "a.npz", "--reference", "b.npz",
                              "--out", "o", "--quick", "--epochs", "1", "--timestep-fs", "1.5",
                              "--max-train-frames", "none"])
    settings = override(cg.QUICK, **overrides_from(args, cg.CGSettings))
    assert settings.training.epochs == 1 and settings.training.max_train_frames is None
    assert settings.timestep_fs == 1.5 and settings.training.folds == cg.QUICK.training.folds
    # each cg step has its own fields only
    with pytest.raises(SystemExit):
        parser.parse_args(["cg", "simulate", "--model", "m", "--start", "s", "--out", "o",
                           "--epochs", "1"])
    args = parser.parse_args(["cv", "bias", "--pdb", "p", "--out", "o", "--height-kjmol", "2",
                              "--temperature-k", "310"])
    bias = override(cv_bias.BiasSettings(), **overrides_from(args, cv_bias.BiasSettings))
    assert (bias.height_kJmol, bias.temperature_K) == (2.0, 310.0)
    args = parser.parse_args(["cv", "explore", "--pdb", "p", "--out", "o", "--quick", "--k", "3",
                              "--max-epochs", "4", "--save-interval-ps", "0.5"])
    explore = override(cv.QUICK_EXPLORE, **overrides_from(args, cv.ExploreSettings))
    assert explore.learn.vamp.k == 3 and explore.learn.vamp.trainer.max_epochs == 4
    assert explore.save_interval_ps == 0.5 and explore.learn.vamp.lag_ps == 10.0
