"""Content-addressed run store: runs/<recipe>/<stage>/<key>/ with a manifest.json each.

The key is a hash of everything that determines an artifact (recipe section, upstream keys,
pinned package versions), so re-running with unchanged inputs finds the artifact and skips.
An artifact is built in a hidden temp folder beside its final place and renamed into place
only when complete, manifest included: a killed run never leaves a folder a later stage trusts.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from harness import __version__, cost
from harness.errors import HarnessError

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
KEY_LENGTH = 16


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(inputs).encode("utf-8")).hexdigest()[:KEY_LENGTH]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


class Store:
    def __init__(self, root: Path, recipe: str):
        self.root = Path(root)
        self.recipe = recipe

    def stage_dir(self, stage: str) -> Path:
        return self.root / self.recipe / stage

    def path(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / key

    def has(self, stage: str, key: str) -> bool:
        """Complete artifacts only: the folder exists and its manifest parses and matches."""
        manifest = self.path(stage, key) / MANIFEST
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return data.get("key") == key and data.get("stage") == stage

    def manifest(self, stage: str, key: str) -> dict[str, Any]:
        if not self.has(stage, key):
            raise HarnessError(f"{self.path(stage, key)}: no complete artifact; run the "
                               f"'{stage}' stage first")
        return json.loads((self.path(stage, key) / MANIFEST).read_text(encoding="utf-8"))

    def stale_temps(self, stage: str) -> list[Path]:
        folder = self.stage_dir(stage)
        return sorted(folder.glob(TMP_PREFIX + "*")) if folder.is_dir() else []

    def clean_stale(self, stage: str) -> list[Path]:
        """Remove temp folders left by killed runs (never trusted, never resumed from)."""
        removed = []
        for tmp in self.stale_temps(stage):
            pid = tmp.name.split("-")[-2] if tmp.name.count("-") >= 3 else ""
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue  # another live process is building it
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
        return removed

    @contextmanager
    def build(self, stage: str, key: str, inputs: dict[str, Any],
              versions: dict[str, str] | None = None,
              details: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield a temp folder to write the artifact into; publish it atomically on success.

        `details` may be filled by the caller while it writes (counts, sources, seeds): it is
        read when the block ends and stored in the manifest."""
        final = self.path(stage, key)
        if self.has(stage, key):
            raise HarnessError(f"{final}: artifact exists already; refusing to overwrite it")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{TMP_PREFIX}{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        started = time.time()
        try:
            yield tmp
            files = {str(p.relative_to(tmp)): file_sha256(p)
                     for p in sorted(tmp.rglob("*")) if p.is_file()}
            manifest = {
                "stage": stage, "key": key, "recipe": self.recipe,
                "inputs": inputs, "versions": versions or {}, "details": details or {},
                "harness_version": __version__,
                "started": started, "finished": time.time(),
                "seconds": round(time.time() - started, 3),
                "cost": cost.reading(stage, inputs, details or {}, started),
                "files": files,
            }
            weights = sorted((n, h) for n, h in files.items() if n.endswith(".safetensors"))
            if weights:  # so a rebuild elsewhere can tell whether it reproduced these weights
                manifest["weights_sha256"] = hashlib.sha256(
                    canonical_json(weights).encode()).hexdigest()
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False,
                                                   default=str), encoding="utf-8")
            _fsync_tree(tmp)
            if final.exists():  # an incomplete folder under the final name: keep it aside
                final.rename(final.parent / f".broken-{key}-{int(time.time())}")
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
