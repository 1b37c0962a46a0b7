from pathlib import Path

import pytest
import yaml

from harness.errors import HarnessError
from harness.recipe import check_recipe_name, load_recipe, load_recipe_file

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_the_three_recipes_ship():
    assert {p.stem for p in RECIPES} >= {"tiny_en_zh", "qwen2_en_zh", "llama3_en_zh"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_validate(path):
    recipe = load_recipe_file(path)
    assert recipe.name == path.stem
    assert recipe.scorer.split == "dev" and recipe.eval.split == "test"
    assert recipe.base.trust_remote_code is False


def test_gpu_recipes_name_the_papers_models():
    qwen = load_recipe_file([p for p in RECIPES if p.stem == "qwen2_en_zh"][0])
    llama = load_recipe_file([p for p in RECIPES if p.stem == "llama3_en_zh"][0])
    assert qwen.base.model == "Qwen/Qwen2-7B-Instruct" and qwen.base.template == "qwen"
    assert llama.base.model == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert llama.base.template == "llama3"
    for r in (qwen, llama):
        sources = {r.datasets[s.dataset].source: s.language for s in r.specialists}
        assert sources == {"medqa": "en", "cmexam": "zh"}


def _tiny(project: Path) -> dict:
    return yaml.safe_load((project / "recipes" / "tiny_en_zh.yaml").read_text())


def _write(tmp_path: Path, data: dict, name="tiny_en_zh") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def _error(tmp_path, data) -> str:
    with pytest.raises(HarnessError) as exc:
        load_recipe_file(_write(tmp_path, data))
    return str(exc.value)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.__setitem__("seedz", [0]), "seedz: unknown key 'seedz'; did you mean 'seeds'?"),
    (lambda d: d["base"]["tiny"].__setitem__("num_layer", 4),
     "base.tiny.num_layer: unknown key 'num_layer'; did you mean 'num_layers'?"),
    (lambda d: d["specialists"][1].__setitem__("languag", "zh"),
     "specialists.1.languag: unknown key 'languag'; did you mean 'language'?"),
    (lambda d: d["specialists"][0]["finetuning"].__setitem__("lora_rnak", 8),
     "specialists.0.finetuning.lora_rnak: unknown key 'lora_rnak'; did you mean 'lora_rank'?"),
    (lambda d: d["merges"][2]["grid"].__setitem__("densty", [0.5]),
     "unknown ties parameter 'densty'; did you mean 'density'?"),
    (lambda d: d["merges"][-1]["options"].__setitem__("halving_factr", 0.5),
     "unknown hi_merging option 'halving_factr'; did you mean 'halving_factor'?"),
    (lambda d: d["merges"][0].__setitem__("method", "tie"), "unknown method 'tie'"),
])
def test_misspelled_keys_are_named_with_a_suggestion(tmp_path, project, mutate, expected):
    data = _tiny(project)
    mutate(data)
    message = _error(tmp_path, data)
    assert expected in message
    assert str(tmp_path / "tiny_en_zh.yaml") in message


def test_search_on_test_split_is_rejected(tmp_path, project):
    data = _tiny(project)
    data["scorer"]["split"] = "test"
    assert "scorer.split must be 'dev'" in _error(tmp_path, data)


def test_unknown_dataset_reference(tmp_path, project):
    data = _tiny(project)
    data["specialists"][0]["dataset"] = "synth_mcqa_fr"
    assert "unknown dataset 'synth_mcqa_fr'" in _error(tmp_path, data)


def test_tiny_head_dim_must_be_64(tmp_path, project):
    data = _tiny(project)
    data["base"]["tiny"]["num_heads"] = 8  # head_dim 16: rejected by vLLM's CPU kernel
    assert "hidden_size/num_heads must be 64" in _error(tmp_path, data)


def test_name_must_match_file(tmp_path, project):
    data = _tiny(project)
    data["name"] = "other"
    assert "must equal the file name" in _error(tmp_path, data)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(HarnessError, match="not valid YAML"):
        load_recipe_file(path)


@pytest.mark.parametrize("name", ["../tiny_en_zh", "a/b", "a\\b", "..", ".hidden", ""])
def test_recipe_names_with_paths_are_rejected(name):
    with pytest.raises(HarnessError, match="is not allowed"):
        check_recipe_name(name)


def test_unknown_recipe_suggests(project):
    with pytest.raises(HarnessError, match="did you mean 'tiny_en_zh'"):
        load_recipe("tiny_en_z", project / "recipes")
