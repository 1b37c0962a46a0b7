"""The one resolver: a hub id (or a local folder) -> a local folder every tool can read.

Every stage that needs a model or a hub dataset asks `resolve()`: training, merging, the
candidate scorer, evaluation, the pre-flights and the export check. A hub id goes through
huggingface_hub's cache (`snapshot_download`), so on a GPU host with network the first call
downloads it, and on a host without network (HF_HUB_OFFLINE=1, CI, this machine) the cached
snapshot is read. The answer names the commit it resolved to; manifests record that commit,
never the machine's cache path.

`publish()` writes a local folder into the same cache in the standard layout (blobs,
snapshots/<commit>, refs/main), which is how the harness's own tiny models become hub ids that
resolve exactly as `Qwen/Qwen2-7B-Instruct` does.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from harness.errors import HarnessError
from harness.store import file_sha256

RepoType = Literal["model", "dataset"]
# What a model snapshot needs: weights as safetensors only (never pickles), configs, tokenizer.
MODEL_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.txt", "*.jinja",
                  "tokenizer.model", "*.tiktoken"]
# Hub ids the harness builds itself (harness/tiny_hub.py) and publishes into the local cache:
# resolved from the cache only, never looked up on the hub, where anyone could own the name.
LOCAL_NAMESPACE = "harness-tiny"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Resolved:
    """Where a reference resolved to. `describe()` is what manifests and published files hold."""
    ref: str                       # what the recipe named: a hub id or a folder
    path: Path                     # the local folder to load from
    kind: Literal["hub", "local", "store"]
    revision: Optional[str] = None  # the hub commit

    def describe(self) -> dict[str, Any]:
        if self.kind == "hub":
            return {"kind": "hub", "id": self.ref, "revision": self.revision, "via": "hub-cache"}
        return {"kind": self.kind, "ref": self.ref}

    @property
    def pinned(self) -> str:
        """`org/name@commit` (mergekit's and our own spelling of a pinned hub model)."""
        return f"{self.ref}@{self.revision}" if self.kind == "hub" else self.ref


def is_hub_id(ref: str) -> bool:
    return bool(HUB_ID.match(ref)) and not Path(ref).expanduser().exists()


def cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment at call time (tests and the
    Ray driver set HF_HOME per run; huggingface_hub itself reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path("~/.cache/huggingface").expanduser()
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def repo_folder(repo_id: str, repo_type: RepoType = "model") -> Path:
    return cache_dir() / f"{repo_type}s--{repo_id.replace('/', '--')}"


def cached_revision(repo_id: str, revision: Optional[str] = None,
                    repo_type: RepoType = "model") -> Optional[str]:
    """The commit the cache holds for `revision` (default main), or None."""
    revision = revision or "main"
    folder = repo_folder(repo_id, repo_type)
    if COMMIT.match(revision):
        return revision if (folder / "snapshots" / revision).is_dir() else None
    ref = folder / "refs" / revision
    if not ref.is_file():
        return None
    commit = ref.read_text().strip()
    return commit if (folder / "snapshots" / commit).is_dir() else None


def resolve(ref: str, revision: Optional[str] = None, repo_type: RepoType = "model",
            allow_patterns: Optional[list[str]] = None, local_only: bool = False,
            what: str = "model") -> Resolved:
    """A local folder for `ref`: a folder as it is, a hub id through the hub cache (downloaded
    first when the hub is reachable and `local_only` is off)."""
    folder = Path(ref).expanduser()
    if not is_hub_id(ref):
        if not folder.exists():
            raise HarnessError(f"{what} {ref!r}: no such folder, and not a hub id (org/name); "
                               "fix the path or name the hub repository")
        return Resolved(ref, folder.resolve(), "local")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = allow_patterns if allow_patterns is not None else (
        MODEL_PATTERNS if repo_type == "model" else None)
    local_only = local_only or ref.split("/")[0] == LOCAL_NAMESPACE
    no_network = local_only or offline()
    try:
        path = snapshot_download(ref, repo_type=repo_type, revision=revision,
                                 cache_dir=str(cache_dir()), allow_patterns=patterns,
                                 local_files_only=no_network)
    except LocalEntryNotFoundError:
        why = ("HF_HUB_OFFLINE is set" if offline() else
               "it is built here, never downloaded" if local_only else "the hub is not reachable")
        raise HarnessError(
            f"{what} {ref!r}{'@' + revision if revision else ''}: not in the hub cache "
            f"{cache_dir()} and {why}; run `harness fetch --recipe NAME` (on a host with hub "
            "access for real hub ids), or point HF_HOME at a cache that holds it") from None
    except HfHubHTTPError as exc:
        first = str(exc).splitlines()[0][:200]
        raise HarnessError(f"{what} {ref!r}: the hub refused it ({first}); check the id, and for "
                           "a gated model accept its licence and set HF_TOKEN") from None
    path = Path(path)
    return Resolved(ref, path, "hub", path.name)


def publish(folder: Path, repo_id: str, repo_type: RepoType = "model") -> Resolved:
    """Copy a folder into the hub cache as `repo_id` (standard layout: content-addressed
    blobs, snapshots/<commit> of relative links to them, refs/main). The commit is a hash of
    the files, so publishing the same files again is a no-op."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    if not files:
        raise HarnessError(f"{folder}: nothing to publish as {repo_id}")
    hashes = {p.relative_to(folder).as_posix(): file_sha256(p) for p in files}
    commit = hashlib.sha1("".join(f"{n}\0{h}\n" for n, h in sorted(hashes.items()))
                          .encode()).hexdigest()
    root = repo_folder(repo_id, repo_type)
    snapshot = root / "snapshots" / commit
    if not snapshot.is_dir():
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        staging = root / "snapshots" / f".tmp-{commit}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        for name, digest in hashes.items():
            blob = root / "blobs" / digest
            if not blob.exists():
                tmp = blob.with_name(f".{digest}.tmp")
                shutil.copyfile(folder / name, tmp)
                tmp.replace(blob)
            link = staging / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        staging.rename(snapshot)  # complete or absent, never half a snapshot
    (root / "refs").mkdir(parents=True, exist_ok=True)
    ref = root / "refs" / "main"
    tmp_ref = ref.with_name(".main.tmp")
    tmp_ref.write_text(commit)
    tmp_ref.replace(ref)
    return Resolved(repo_id, snapshot, "hub", commit)

