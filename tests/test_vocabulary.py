"""Fine-tunes whose vocabulary differs from the base's (`tokenizer_source: base`): mapped onto
the base's token ids by token string exactly as mergekit does, in memory and on disk, and a
base padded past its tokenizer (Qwen2-7B) keeps its rows.

The models are tiny random-weight Qwen2 models; a 'renumbered' fine-tune is the same function
under another vocabulary numbering with tokens of its own, so a merge that maps it back must
equal the merge of the original.
"""
import json
from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.hub import Resolved
from harness.merge import preflight
from harness.merge.config import mergekit_config, validate
from harness.merge.memory import InMemoryMerger, load_folder

from tiny_models import make_model, padded, renumbered
from test_existing_specialists import finetune

METHODS = [("ties", {"density": 0.5, "weight": 1.0}), ("task_arithmetic", {"weight": 0.7}),
           ("linear", {"weight": 1.0})]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    base = make_model(root / "base", seed=0)
    en = finetune(base, root / "en", seed=1, noise=0.05)
    zh = finetune(base, root / "zh", seed=2, noise=0.05)
    return base, en, zh, renumbered(zh, root / "zh_renumbered", seed=3)


@pytest.fixture(scope="module")
def missing(family, tmp_path_factory):
    """The zh fine-tune renumbered and without 5 of the base's tokens, and their base ids."""
    zh = family[2]
    folder = renumbered(zh, tmp_path_factory.mktemp("missing") / "zh", seed=4, dropped=5)
    base_vocab = json.loads((family[0] / "tokenizer.json").read_text())["model"]["vocab"]
    own = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    return folder, sorted(i for t, i in base_vocab.items() if t not in own)


def written(config: dict, out: Path) -> dict[str, torch.Tensor]:
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(validate(config), str(out), MergeOptions(random_seed=0, quiet=True,
                                                       copy_tokenizer=True))
    return load_folder(out, torch.float32)


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """The tensor names where a and b differ (in keys, shape or any value)."""
    return sorted(n for n in a.keys() | b.keys()
                  if n not in a or n not in b or not torch.equal(a[n], b[n]))


@pytest.mark.parametrize("method,values", METHODS)
def test_a_renumbered_fine_tune_merges_as_the_original(family, tmp_path, method, values):
    """In memory and through mergekit-yaml alike, the renumbered fine-tune's merge equals the
    original's merge on every tensor: the rows went back to the base's ids, the fine-tune's
    own tokens were dropped."""
    base, en, zh, zh_renumbered = family
    original = InMemoryMerger(base, {"en": en, "zh": zh}).merge(method, values, seed=0)
    engine = InMemoryMerger(base, {"en": en, "zh": zh_renumbered}, reconcile_vocabulary=True)
    mapped = engine.merge(method, values, seed=0)
    assert equal(mapped, original) == []
    config = mergekit_config(method, values, str(base), [str(en), str(zh_renumbered)],
                             "float32", reconcile_vocabulary=True)
    assert config["tokenizer"]["source"] == ("base" if method != "linear" else str(base))
    assert equal(written(config, tmp_path / "out"), mapped) == []
    # the renumbered rows are not the original's: equality above came from the mapping
    rows = load_folder(zh_renumbered, torch.float32)["model.embed_tokens.weight"][:3000]
    assert not torch.equal(rows, load_folder(zh, torch.float32)["model.embed_tokens.weight"])


@pytest.mark.parametrize("method,values", METHODS)
def test_a_token_the_fine_tune_lacks_takes_mergekits_row(family, missing, tmp_path, method,
                                                         values):
    """Five base tokens the fine-tune lacks: with a base model their zh row is the base's (no
    change from zh), without one (linear) the other model's, as mergekit fills them; the
    in-memory merge equals mergekit-yaml's on every tensor either way."""
    base, en, zh, _ = family
    zh_missing, ids = missing
    assert len(ids) == 5
    mapped = InMemoryMerger(base, {"en": en, "zh": zh_missing},
                            reconcile_vocabulary=True).merge(method, values, seed=0)
    config = mergekit_config(method, values, str(base), [str(en), str(zh_missing)],
                             "float32", reconcile_vocabulary=True)
    assert equal(written(config, tmp_path / "out"), mapped) == []
    # the same merge with zh's rows for those tokens taken from the donor mergekit names
    patched = tmp_path / "zh_patched"
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(zh, patched)
    tensors = load_folder(zh, torch.float32)
    donor = load_folder(base if method != "linear" else en, torch.float32)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[name][ids] = donor[name][ids]
    save_file(tensors, str(patched / "model.safetensors"), metadata={"format": "pt"})
    expected = InMemoryMerger(base, {"en": en, "zh": patched}).merge(method, values, seed=0)
    assert equal(mapped, expected) == []


@pytest.mark.parametrize("reconcile", [False, True])
def test_a_padded_base_keeps_its_rows(tmp_path, reconcile):
    """A base whose embeddings are padded past its tokenizer (Qwen2-7B: 152064 rows, 151646
    tokens): every merge keeps the base's row count on disk, equal to the in-memory candidate,
    with or without a vocabulary mapping."""
    base = padded(make_model(tmp_path / "base", seed=0), 3072)
    en = finetune(base, tmp_path / "en", seed=1, noise=0.05)
    zh = finetune(base, tmp_path / "zh", seed=2, noise=0.05)
    if reconcile:
        zh = renumbered(zh, tmp_path / "zh_renumbered", seed=3)
    values = {"density": 0.5, "weight": 1.0}
    memory = InMemoryMerger(base, {"en": en, "zh": zh}, reconcile_vocabulary=reconcile).merge(
        "ties", values, seed=0)
    config = mergekit_config("ties", values, str(base), [str(en), str(zh)], "float32",
                             reconcile_vocabulary=reconcile)
    assert ("tokenizer" in config) == reconcile and "tokenizer_source" not in config
    disk = written(config, tmp_path / "out")
    assert disk["model.embed_tokens.weight"].shape[0] == 3072
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 3072
    assert equal(disk, memory) == []


def test_preflight_refuses_a_differing_vocabulary_unless_mapped(family):
    base, en, _, zh_renumbered = family
    resolved = Resolved("org/base", base, "local")
    with pytest.raises(HarnessError) as err:
        preflight.check_compatible(resolved, {"en": en, "zh": zh_renumbered},
                                   existing=frozenset({"en", "zh"}))
    message = str(err.value)
    assert "\n" not in message and "zh (" in message and "differ in vocab_size: 3004 vs 3000" in message
    assert "`tokenizer_source: base` on specialist zh" in message
    checked = preflight.check_compatible(resolved, {"en": en, "zh": zh_renumbered},
                                         existing=frozenset({"en", "zh"}),
                                         reconcile=frozenset({"zh"}))
    mapped = checked["tokenizer_source"]["mapped"]["zh"]
    assert mapped["shared"] == 3000 and mapped["dropped"] == 4 and mapped["from_base"] == 0
    assert mapped["moved"] > 2900  # nearly every non-special token changed its id


def test_a_tokenizer_that_cuts_text_differently_is_refused_even_when_mapped(family, tmp_path):
    base, en, zh, _ = family
    other = tmp_path / "other"
    import shutil

    shutil.copytree(zh, other)
    tok = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    tok["model"]["vocab"] = {f"x{t}": i for t, i in tok["model"]["vocab"].items()}
    (other / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    with pytest.raises(HarnessError) as err:
        preflight.check_compatible(Resolved("org/base", base, "local"), {"zh": other},
                                   existing=frozenset({"zh"}), reconcile=frozenset({"zh"}))
    message = str(err.value)
    assert "\n" not in message and "cannot be mapped onto the base org/base" in message
    assert "of the base's 3000 tokens are in the fine-tune's vocabulary" in message


@pytest.mark.parametrize("where,value,expected", [
    (0, "base", "`tokenizer_source` is for an existing model"),   # en_mcqa is trained here
    (1, "union", "specialists.1.tokenizer_source: Input should be 'base'")])
def test_the_recipe_key_is_checked(where, value, expected):
    import yaml

    from conftest import PROJECT
    from harness.recipe import parse_recipe

    data = yaml.safe_load((PROJECT / "recipes" / "tiny_existing_en_zh.yaml").read_text())
    if where == 0:
        data["specialists"][0] = {"name": "en_mcqa", "dataset": "synth_mcqa_en",
                                  "language": "en", "task_type": "mcqa"}
    data["specialists"][where]["tokenizer_source"] = value
    with pytest.raises(HarnessError) as err:
        parse_recipe(data)
    assert expected in str(err.value)
