import re
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.models import check_weights_folder, folder_fingerprint

SOURCES = sorted((Path(__file__).resolve().parents[1] / "harness").rglob("*.py"))


@pytest.mark.parametrize("pattern", [
    r"shell\s*=\s*True", r"\bos\.system\(", r"\bos\.popen\(", r"yaml\.load\(",
    r"yaml\.unsafe_load", r"torch\.load\(", r"\bpickle\.loads?\(",
    r"trust_remote_code\s*=\s*True",
])
def test_no_unsafe_calls_in_the_package(pattern):
    hits = [f"{p}:{i}" for p in SOURCES for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(pattern, line)]
    assert not hits, hits


def test_pickle_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(HarnessError, match="pickle weights pytorch_model.bin.*safetensors"):
        check_weights_folder(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(HarnessError, match="model folder not found"):
        check_weights_folder(tmp_path / "nope")


def test_safetensors_folder_accepted_and_fingerprinted(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert [p.name for p in check_weights_folder(tmp_path)] == ["model.safetensors"]
    before = folder_fingerprint(tmp_path)
    save_file({"w": torch.zeros(2, 3)}, str(tmp_path / "model.safetensors"))
    assert folder_fingerprint(tmp_path) != before
