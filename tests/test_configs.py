"""Config defaults, overrides from files and the command line, and their errors."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

import configs
from base.errors import UserError


def test_defaults_follow_the_authors_recipe() -> None:
    c = configs.Config()
    assert (c.train.window_length, c.train.hop_length, c.train.batch_size) == (300, 200, 8)
    assert (c.train.learning_rate, c.train.min_learning_rate, c.train.weight_decay) == (1e-5, 1e-6, 1e-3)
    assert (c.train.patience, c.train.factor, c.train.early_stopping, c.train.num_epochs) == (5, 0.1, 20, 100)
    assert c.model.modality == ("frame", "vggish", "mfcc")
    assert c.model.cnn1d_channels == (128, 128, 128, 128)
    assert c.model.output_dim == 1
    assert configs.replace_section(c.model, {"emotion": "both"}).output_dim == 2
    assert configs.replace_section(c.model, {"head": "mh"}).output_dim == 2


def test_overrides_nested_and_flat() -> None:
    c = configs.apply_overrides(configs.Config(), {"train": {"batch_size": 4}, "learning_rate": 1e-3,
                                                   "modality": ["frame", "mfcc"], "fold": 3})
    assert c.train.batch_size == 4 and c.train.learning_rate == 1e-3
    assert c.model.modality == ("frame", "mfcc")
    assert c.train.fold == (3,)
    assert configs.Config().train.batch_size == 8, "defaults are frozen, not mutated"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_sise": 4}, "unknown config key 'batch_sise'"),
        ({"train": {"nope": 1}}, "unknown config key 'train.nope'"),
        ({"batch_size": "8"}, "'train.batch_size' must be an integer"),
        ({"learning_rate": "fast"}, "'train.learning_rate' must be a number"),
        ({"resume": 3}, "'train.resume' must be true/false"),
        ({"modality": ["frame", "smell"]}, "unknown modality 'smell'"),
        ({"fold": 6}, "fold 6 is outside 0-5"),
        ({"emotion": "joy"}, "'emotion' must be valence, arousal or both"),
        ({"model_name": "gru"}, "config key 'model_name' must be 2d1d, lfan or can, got 'gru'"),
        ({"audio_chunk_size": 0}, "'audio_chunk_size' must be positive"),
        ({"train": 3}, "section 'train' must be a mapping"),
    ],
)
def test_bad_overrides_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        configs.apply_overrides(configs.Config(), overrides)


def _parse(argv: list[str]) -> configs.Config:
    parser = argparse.ArgumentParser()
    configs.add_config_arguments(parser, aliases={"learning_rate": ("-learning_rate",)})
    return configs.resolve(parser.parse_args(argv))


def test_command_line_overrides_file_overrides_defaults(tmp_path: Path) -> None:
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"train": {"batch_size": 2, "learning_rate": 0.5}}))
    c = _parse(["--config", str(config_file), "-learning_rate", "0.01", "--modality", "frame", "vggish"])
    assert c.train.batch_size == 2  # from the file
    assert c.train.learning_rate == 0.01  # the command line wins
    assert c.model.modality == ("frame", "vggish")
    assert c.train.num_epochs == 100  # default


def test_yaml_file_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "c.yaml"
    good.write_text("model:\n  head: mh\n")
    assert _parse(["--config", str(good)]).model.head == "mh"
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {head: mh, heads: 2}\n")
    with pytest.raises(UserError, match="unknown config key 'model.heads'"):
        _parse(["--config", str(bad)])
    with pytest.raises(UserError, match="does not exist"):
        _parse(["--config", str(tmp_path / "missing.json")])
    broken = tmp_path / "broken.json"
    broken.write_text("{oops")
    with pytest.raises(UserError, match="could not be parsed"):
        _parse(["--config", str(broken)])


def test_wrong_type_on_the_command_line_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit):
        _parse(["--batch-size", "eight"])


def test_save_config_round_trips(tmp_path: Path) -> None:
    c = configs.resolve_recipe(configs.apply_overrides(configs.Config(), {"head": "mh", "fold": [1, 2]}))
    path = configs.save_config(c, tmp_path / "run")
    assert path.name == "config.json"
    assert configs.from_dict(json.loads(path.read_text())) == c


def test_recipe_fills_every_unset_behaviour_and_explicit_keys_win() -> None:
    authors = _parse([])
    corrected = _parse(["--recipe", "corrected", "--fusion-quirk", "1", "--ccc-loss", "authors"])
    assert authors.train.recipe == "authors"
    for key, values in configs.RECIPE_SETTINGS.items():
        section = "model" if key in configs.MODEL_RECIPE_KEYS else "train"
        assert getattr(getattr(authors, section), key) == values[configs.Recipe.AUTHORS], key
        if key not in ("fusion_quirk", "ccc_loss"):
            assert getattr(getattr(corrected, section), key) == values[configs.Recipe.CORRECTED], key
    assert corrected.model.fusion_quirk is True and corrected.train.ccc_loss == "authors"
    # a later --recipe still decides the keys a config file left unset
    assert configs.resolve_recipe(configs.apply_overrides(configs.Config(), {"recipe": "corrected"})).train.epoch_order \
        == "reshuffle"


def test_stored_config_without_a_recipe_predates_recipes() -> None:
    stored = configs.to_dict(configs.Config())
    del stored["train"]["recipe"]
    for key in configs.RECIPE_SETTINGS:
        stored["model" if key in configs.MODEL_RECIPE_KEYS else "train"].pop(key)
    restored = configs.from_dict(stored)
    assert restored.train.recipe == "corrected" and restored.train.epoch_order == "reshuffle"
    assert restored.model.frozen_batchnorm == "eval"


@pytest.mark.parametrize(("flags", "message"), [
    (["--recipe", "mine"], "config key 'recipe' must be authors or corrected, got 'mine'"),
    (["--ccc-loss", "mse"], "config key 'ccc_loss' must be authors or population"),
    (["--test-statistics", "Test_Set"], "config key 'test_statistics' must be Target_Set or Validation_Set"),
])
def test_bad_recipe_values_name_the_key(flags, message) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        _parse(flags)


def test_every_field_has_help_text() -> None:
    assert set(configs.FIELD_HELP) == set(configs.FLAT_KEYS)
    parser = argparse.ArgumentParser()
    configs.add_config_arguments(parser)
    assert "AudioSet VGGish release" in parser.format_help()
