"""InpaintSettings: defaults, checks, parsing from strings and the command-line options derived
from it."""

import argparse
import json

import pytest

from moebius.errors import InputError
from moebius.settings import (
    Category,
    InpaintSettings,
    PasteMode,
    Prefill,
    Strategy,
    add_settings_args,
    as_options,
    item_seed,
    settings_from_args,
)


def test_defaults_are_the_authors():
    settings = InpaintSettings().validate()
    assert (settings.steps, settings.guidance, settings.strength) == (20, 2.5, 0.99)
    assert settings.noise_offset == 0.0357 and settings.seed == 0
    assert settings.category is Category.BACKGROUND and settings.paste is PasteMode.BLEND
    assert settings.denoising_steps == 19
    assert json.loads(json.dumps(settings.to_dict()))["category"] == "background"


def test_strings_become_choices():
    settings = InpaintSettings(category="foreground", strategy="crop", paste="compensate")
    assert settings.category is Category.FOREGROUND and settings.strategy is Strategy.CROP
    assert settings.category.other is Category.BACKGROUND
    assert Category.FOREGROUND.token_ids == tuple(range(10, 20))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"guidance": "nan"}, "guidance must be a finite number"),
        ({"guidance": float("inf")}, "guidance must be a finite number"),
        ({"steps": "0"}, "steps must be in [1, 1000]"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"steps": True}, "steps must be a number"),
        ({"strength": 0}, "strength must be in (0, 1]"),
        ({"steps": 1}, "run no denoising step"),
        ({"seed": -3}, "seed must be in"),
        ({"image_size": 100}, "image_size must be a multiple of 64"),
        ({"category": "sky"}, "category must be one of background, foreground"),
        ({"resize_mask": "maybe"}, "resize_mask must be true or false"),
        ({"colour": 1}, "unknown setting(s) colour"),
    ],
)
def test_bad_values_are_one_line_errors(values, message):
    with pytest.raises(InputError) as info:
        InpaintSettings.from_mapping(values)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_from_mapping_parses_form_strings():
    settings = InpaintSettings.from_mapping(
        {
            "steps": "30",
            "guidance": " 1.5",
            "seed": "",
            "category": "Foreground",
            "resize_mask": "on",
        }
    )
    assert settings.steps == 30 and settings.guidance == 1.5 and settings.seed is None
    assert settings.category is Category.FOREGROUND and settings.resize_mask is True
    assert settings.with_seed().seed is not None
    again = InpaintSettings.from_mapping(settings.to_dict())
    assert again == settings


def test_describe_lists_every_setting_with_its_bounds():
    rows = {row["name"]: row for row in InpaintSettings.describe()}
    assert list(rows) == [f for f in InpaintSettings.__dataclass_fields__]
    assert rows["steps"]["low"] == 1 and rows["steps"]["default"] == 20
    assert rows["paste"]["choices"] == ["blend", "compensate", "none"]
    assert rows["seed"]["nullable"] and not rows["guidance"]["nullable"]
    assert all(row["help"] for row in rows.values())


def test_command_line_options_are_derived():
    parser = argparse.ArgumentParser()
    add_settings_args(parser)
    assert settings_from_args(parser.parse_args([])) == InpaintSettings()
    args = parser.parse_args(
        ["--steps", "8", "--paste", "none", "--seed", "random", "--resize-mask"]
    )
    settings = settings_from_args(args)
    assert (settings.steps, settings.paste, settings.seed, settings.resize_mask) == (
        8,
        PasteMode.NONE,
        None,
        True,
    )
    assert "(default: 2.5)" in parser.format_help()
    # options not given take the model's own defaults, given ones win over them
    own = InpaintSettings(strength=0.25, prefill="telea", guidance=1.0)
    assert settings_from_args(parser.parse_args([]), own) == own
    assert settings_from_args(parser.parse_args(["--prefill", "none"]), own) == InpaintSettings(
        strength=0.25, guidance=1.0
    )
    # a switch a model turns on by default can be turned off
    own = InpaintSettings(strength=0.25, residual_decode=True)
    off = settings_from_args(parser.parse_args(["--no-residual-decode"]), own)
    assert off == InpaintSettings(strength=0.25)
    # settings written out as options (the README's demo defaults) parse back to themselves
    written = {"strength": 0.25, "prefill": Prefill.TELEA, "residual_decode": True}
    written |= {"resize_mask": False, "steps": 8}
    options = as_options(written)
    assert options == (
        "--strength 0.25 --prefill telea --residual-decode --no-resize-mask --steps 8"
    )
    assert settings_from_args(parser.parse_args(options.split())) == InpaintSettings(**written)
    subset = argparse.ArgumentParser()
    add_settings_args(subset, ["steps"])
    assert settings_from_args(subset.parse_args(["--steps", "3"])) == InpaintSettings(steps=3)


def test_item_seeds_depend_only_on_the_run_seed_and_the_name():
    assert item_seed(0, "a.png") == item_seed(0, "a.png")
    assert len({item_seed(0, "a.png"), item_seed(1, "a.png"), item_seed(0, "b.png")}) == 3
    assert 0 <= item_seed(7, "x") < 2**63
