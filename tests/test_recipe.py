"""Recipes: strict keys, types and ranges; the shipped recipes parse."""

from pathlib import Path

import pytest

from ghost_vllm.errors import RecipeError
from ghost_vllm.recipe import build_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"selection": {"methd": "ghost"}}, "selection.methd: unknown key; allowed: method, sparsity, multiple_of, seed"),
        ({"selection": {"sparsity": "half"}}, "selection.sparsity: 'half' is a str; expected float"),
        ({"selection": {"sparsity": float("nan")}}, "selection.sparsity: nan is not allowed"),
        ({"selection": {"sparsity": 1}}, "selection.sparsity: 1.0 is not allowed"),
        ({"selection": {"method": "obs"}}, "selection.method: 'obs' is not allowed; allowed: ghost"),
        ({"selection": {"multiple_of": 0}}, "selection.multiple_of: 0 is not allowed"),
        ({"calibration": {"nsamples": True}}, "calibration.nsamples: True is a bool; expected int"),
        ({"calibration": {"seq_len": 1}}, "calibration.seq_len: 1 is not allowed"),
        ({"calibration": 5}, "calibration: expected a mapping"),
        ({"modle": {}}, "modle: unknown section; allowed: model, calibration, selection, output"),
        ({"model": {"dtype": "int8"}}, "model.dtype: 'int8' is not allowed"),
        ({"output": {"overwrite": "yes"}}, "output.overwrite: 'yes' is a str; expected bool"),
        ([1, 2], "top level: expected a mapping"),
    ],
)
def test_bad_recipes(raw, message):
    with pytest.raises(RecipeError) as e:
        build_recipe(raw)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_tags_are_rejected(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("selection: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)
    assert not (Path.cwd() / "pwned").exists()


def test_overrides_win_and_defaults_fill_in():
    r = build_recipe({"selection": {"method": "random", "sparsity": 0.3}}, {"selection.sparsity": 0.7, "model.path": None})
    assert r.selection.method == "random" and r.selection.sparsity == 0.7
    assert r.model.path == "reference" and r.calibration.nsamples == 128 and r.calibration.seq_len == 128
    assert str(r.output_dir()) == "reference-random70"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*ghost*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_parse(path):
    r = load_recipe(path)
    assert r.selection.method == "ghost" and r.selection.sparsity == 0.5
