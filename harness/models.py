"""Model references and the weight-format rule: safetensors only, never pickles."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from harness import hub
from harness.errors import HarnessError
from harness.recipe import BaseModelSpec, Specialist, model_kind

# Weight files that unpickle on load: a malicious one runs code. We never load them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_weights_folder(folder: Path) -> list[Path]:
    """Return the folder's safetensors files; refuse a folder whose weights are pickles."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HarnessError(f"{folder}: model folder not found; check base.model in the recipe")
    weights = sorted(folder.glob("*.safetensors"))
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not weights:
        found = f" (found pickle weights {', '.join(pickles)})" if pickles else ""
        raise HarnessError(f"{folder}: no *.safetensors weights{found}; convert the model to "
                           "safetensors first (pickled weights are never loaded)")
    return weights


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header (names, dtypes, shapes, offsets): read without loading any tensor."""
    with open(path, "rb") as fh:
        size_bytes = fh.read(8)
        if len(size_bytes) != 8:
            raise HarnessError(f"{path}: not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", size_bytes)
        if size > 100_000_000:
            raise HarnessError(f"{path}: not a safetensors file (header size {size})")
        return json.loads(fh.read(size))


def folder_fingerprint(folder: Path) -> str:
    """Cheap content identity of a local model: small files hashed whole, weights by header+size.

    Hashing 15 GB of weights at every plan would cost minutes; a safetensors header pins every
    tensor's name, dtype, shape and byte range, and the size pins the rest.
    """
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        digest.update(str(path.relative_to(folder)).encode())
        if path.suffix == ".safetensors":
            digest.update(json.dumps(safetensors_header(path), sort_keys=True).encode())
            digest.update(str(path.stat().st_size).encode())
        elif path.stat().st_size < 50_000_000:
            digest.update(path.read_bytes())
        else:
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()[:16]


def base_reference(spec: BaseModelSpec) -> dict[str, Any]:
    """What identifies the base model in content keys (the tiny base gets its unit's key; a
    hub model its id and the revision the recipe pins, the commit it resolves to is recorded
    in every manifest)."""
    if spec.kind == "hub":
        return {"kind": "hub", "id": spec.model, "revision": spec.revision or "main",
                "dtype": spec.dtype}
    if spec.kind == "local":
        folder = Path(spec.model).expanduser().resolve()
        check_weights_folder(folder)
        return {"kind": "local", "path": str(folder), "fingerprint": folder_fingerprint(folder),
                "dtype": spec.dtype}
    return {"kind": "tiny"}


def weights_hash(folder: Path) -> str:
    """Content hash of a local model: every file's bytes (weights included), so new weights of
    the same shapes change it. Read once per plan: seconds for a 7B model on a local disk."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def specialist_reference(sp: Specialist, dtype: str) -> dict[str, Any]:
    """What identifies an existing fine-tune in content keys: a hub id with the commit its
    revision resolves to in the hub cache (an upstream change re-keys everything built from
    it; None when the cache does not hold it yet: `harness fetch`), or a local folder with the
    hash of its files."""
    if model_kind(sp.model) == "hub":
        revision = sp.revision or "main"
        return {"kind": "hub", "id": sp.model, "revision": revision,
                "commit": hub.cached_revision(sp.model, revision), "dtype": dtype}
    folder = Path(sp.model).expanduser().resolve()
    check_weights_folder(folder)
    return {"kind": "local", "path": str(folder), "fingerprint": weights_hash(folder),
            "dtype": dtype}


def resolve_base(store, base: dict[str, Any], what: str = "base.model") -> hub.Resolved:
    """The base model's folder, for every stage: the tiny base from the run store, a local
    folder as it is, a hub id through the hub cache (the one resolver, harness/hub.py)."""
    if base["kind"] == "tiny":
        resolved = hub.Resolved("tiny", store.path("specialists", base["key"]) / "model", "store")
    elif base["kind"] == "local":
        resolved = hub.Resolved(base["path"], Path(base["path"]), "local")
    else:
        # an existing specialist's reference pins the commit the plan keyed
        revision = base.get("commit") or base.get("revision")
        resolved = hub.resolve(base["id"], None if revision in (None, "main") else revision,
                               what=what)
    check_weights_folder(resolved.path)
    return resolved
