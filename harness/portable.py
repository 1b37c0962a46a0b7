"""Published files name things anyone can resolve from a checkout, never this machine's paths.

The run store and the manifests hold absolute paths (mergekit needs them, and they are local
by nature). What goes under leaderboard/ is rewritten: a run-store path becomes
`runs/<recipe>/<stage>/<key>/...` (the run store of whoever re-runs it: ./runs or
HARNESS_RUNS_DIR), a hub-cache snapshot becomes `org/name@commit`, a project path becomes
relative to the checkout, the home folder `~`. `harness reproduce` reads those names back.
"""
from __future__ import annotations

import re
from pathlib import Path

from harness import hub

# .../models--org--name/snapshots/<commit>[/file]: any hub cache, this machine's or another's
_SNAPSHOT = re.compile(r"(?:/[^\s\"',]*)?/(?:models|datasets)--([\w.-]+?)--([\w.-]+)"
                       r"/snapshots/([0-9a-f]{40})")
RUNS = "runs"


class Portable:
    def __init__(self, runs_root: Path, project: Path):
        self.roots = [(str(Path(runs_root).resolve()), RUNS),
                      (str(Path(runs_root)), RUNS),
                      (str(Path(project).resolve()) + "/", ""),
                      (str(Path(project).resolve()), "."),
                      (str(Path.home()), "~")]

    def text(self, text: str) -> str:
        text = _SNAPSHOT.sub(lambda m: f"{m.group(1)}/{m.group(2)}@{m.group(3)}", text)
        for root, name in self.roots:
            if root and root not in ("/", "."):
                text = text.replace(root, name)
        return text


def local_reference(ref: str, runs_root: Path) -> str:
    """A published model reference as a local folder: `runs/...` in this run store, a pinned
    hub model through the hub cache (the one resolver), anything else as it is."""
    if ref == RUNS or ref.startswith(RUNS + "/"):
        return str(Path(runs_root).resolve() / ref[len(RUNS) + 1:])
    name, _, revision = ref.partition("@")
    if hub.HUB_ID.match(name) and not Path(ref).exists():
        return str(hub.resolve(name, revision or None, what="model").path)
    return ref
