"""Hierarchical Iterative Merging (Fu et al., ACL 2025), as ../shared/docs/HI_MERGING.md lays out.

Every candidate is a TIES merge (sign election by sum, disjoint mean, normalize off) of the
specialists' magnitude-pruned, scaled task vectors, described per group (each layer, plus the
non-layer tensors) by which models take part with which (density p, scale s). A model that
does not take part in a group has weight 0 there, which in mergekit's TIES is the same as
leaving it out; the final model is therefore exactly one mergekit config with `filter:
"layers.N."` entries.

Where the search adds scores of different tasks (acceptance of a change, Γ over models, the
severe case's keeper), option `combine` sets the scale: by default each task's score counts per
unit of its specialist's dev gain over the base (harness/merge/gains.py), so an open-QA
log-likelihood and an MCQA accuracy, or a 5- and a 4-option task, weigh the same.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from harness.merge.gains import Reference
from harness.merge.memory import InMemoryMerger

log = logging.getLogger("harness")
REST = "rest"  # embeddings, final norm, lm_head: merged with the model-wise settings
Group = Any    # int layer index or REST
Part = tuple[float, float]  # (density p, scale s)
Spec = dict[Group, dict[str, Part]]
# Sums on the combine scale that differ by less than this are equal: a rescaled task must not
# turn an exact tie (the same dev answers) into a loss through float rounding.
TOLERANCE = 1e-9


@dataclass
class Options:
    prune_grid: list[float]
    scale_grid: list[float]
    search: str = "coarse_to_fine"
    halving_factor: float = 0.5
    greedy_acceptance: bool = True
    recompute_every: int = 4
    epsilon: float = 0.0
    max_iterations: Optional[int] = None
    non_layer_tensors: str = "model_wise"
    combine: str = "normalised_gain"


def spec_key(spec: Spec) -> str:
    canon = sorted((str(g), sorted((m, round(p, 6), round(s, 6)) for m, (p, s) in parts.items()))
                   for g, parts in spec.items())
    return hashlib.sha256(json.dumps(canon).encode()).hexdigest()[:20]


class Candidates:
    """Builds a candidate's tensors from its spec; groups already built are reused."""

    def __init__(self, engine: InMemoryMerger):
        self.engine = engine
        self.groups: dict[Group, list[str]] = {l: engine.layer_tensors(l) for l in engine.layers}
        self.groups[REST] = [n for n in engine.names
                             if not any(n in names for names in self.groups.values())]
        self._built: dict[tuple, dict[str, torch.Tensor]] = {}

    def group(self, group: Group, parts: dict[str, Part]) -> dict[str, torch.Tensor]:
        key = (group, tuple(sorted(parts.items())))
        if key not in self._built:
            names = self.groups[group]
            if not parts:
                out = {n: self.engine.base[n] for n in names}
            else:
                per_model = {m: {"density": p, "weight": s} for m, (p, s) in parts.items()}
                out = self.engine.merge("ties", {"weight": 0.0, "density": 1.0,
                                                 "normalize": False, "lambda": 1.0},
                                        tensors=names, per_model=per_model)
            if len(self._built) > 512:  # bounded: a search touches few distinct groups at once
                self._built.pop(next(iter(self._built)))
            self._built[key] = out
        return self._built[key]

    def build(self, spec: Spec) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for group in self.groups:
            out.update(self.group(group, spec.get(group, {})))
        return out


class ScoreCache:
    """Scores by (candidate spec hash, task): never scored twice, kept on disk for resume."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self.scores: dict[str, float] = {}
        if path and path.exists():
            self._load(path)
        self.hits = self.misses = 0
        self.fresh: set[str] = set()  # scored ahead by a batch, not yet asked for

    def _load(self, path: Path) -> None:
        """Read the scores a killed run left; a torn or corrupt line (the kill's last write)
        is skipped with a warning, so its candidate is scored again."""
        text = path.read_text(encoding="utf-8", errors="replace")
        bad = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                row = json.loads(line)
                self.scores[str(row["key"])] = float(row["score"])
            except (ValueError, KeyError, TypeError):
                bad.append(number)
        if bad:
            log.warning("hi_merging: %s: skipped %d unreadable line(s) (%s), left by a killed "
                        "run; those candidates are scored again", path, len(bad),
                        ", ".join(map(str, bad[:5])))
        if bad or not text.endswith("\n"):
            tmp = path.with_name(path.name + ".tmp")  # keep only whole lines, then append
            tmp.write_text("".join(json.dumps({"key": k, "score": v}) + "\n"
                                   for k, v in self.scores.items()), encoding="utf-8")
            tmp.replace(path)

    def get(self, key: str) -> Optional[float]:
        value = self.scores.get(key)
        if value is None:
            self.misses += 1
        elif key in self.fresh:
            self.fresh.discard(key)  # counted as scored when its batch ran
        else:
            self.hits += 1
        return value

    def put_batch(self, scores: dict[str, float]) -> None:
        for key, score in scores.items():
            self.put(key, score)
        self.fresh.update(scores)
        self.misses += len(scores)

    def put(self, key: str, score: float) -> None:
        self.scores[key] = score
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"key": key, "score": score}) + "\n")


@dataclass
class HiMerging:
    candidates: Candidates
    score_tensors: Callable[[dict[str, torch.Tensor], str], float]  # (tensors, task) -> S
    tasks: dict[str, str]  # model name -> its task (dev split) name
    options: Options
    cache: ScoreCache = field(default_factory=lambda: ScoreCache(None))
    decisions: list[dict] = field(default_factory=list)
    progress: Any = None  # a tqdm bar counting scored candidates (cache hits included)
    # (candidate spec, task) pairs -> scores, for a whole batch at once: set when candidates
    # are spread over several scoring processes (harness/merge/stage.py); each step hands it
    # every candidate it is about to ask for (prefetch)
    score_batch: Optional[Callable[[list[tuple[Spec, str]]], list[float]]] = None
    _reference: Optional[Reference] = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------- scoring
    def S(self, spec: Spec, model: str) -> float:
        task = self.tasks[model]
        key = f"{spec_key(spec)}:{task}"
        value = self.cache.get(key)
        if value is None:
            if self.score_batch is not None:
                value = float(self.score_batch([(spec, task)])[0])
            else:
                value = float(self.score_tensors(self.candidates.build(spec), task))
            self.cache.put(key, value)
        if self.progress is not None:
            self.progress.update(1)
        return value

    def prefetch(self, items: list[tuple[Spec, str]]) -> None:
        """Score the (candidate, model) pairs a step is about to ask for as one batch, when
        a batch scorer is set; the step then reads them from the cache."""
        if self.score_batch is None:
            return
        todo: dict[str, tuple[Spec, str]] = {}
        for spec, model in items:
            task = self.tasks[model]
            key = f"{spec_key(spec)}:{task}"
            if key not in self.cache.scores:
                todo.setdefault(key, (spec, task))
        if todo:
            scores = self.score_batch(list(todo.values()))
            self.cache.put_batch({k: float(v) for k, v in zip(todo, scores)})

    # ------------------------------------------------------------- one scale across tasks
    def reference(self) -> Reference:
        """Each model's task scored on the base and on the whole specialist (p = s = 1)."""
        self.prefetch([(spec, m) for m in self.models
                       for spec in ({}, self.single(m, (1.0, 1.0)))])
        return Reference({m: self.S({}, m) for m in self.models},
                         {m: self.S(self.single(m, (1.0, 1.0)), m) for m in self.models})

    def unit(self, model: str) -> float:
        """What one point of `model`'s dev score is worth when tasks are summed: 1 / its
        specialist's gain over the base (`combine: normalised_gain`), or 1 (`raw`)."""
        if self.options.combine == "raw":
            return 1.0
        if self._reference is None:
            self._reference = self.reference()
        return self._reference.unit(model)

    def total(self, scores: dict[str, float]) -> float:
        """Scores of one candidate, one per model's task, summed on the combine scale."""
        return sum(s * self.unit(m) for m, s in scores.items())

    @property
    def models(self) -> list[str]:
        return list(self.tasks)

    @property
    def groups(self) -> list[Group]:
        return list(self.candidates.groups)

    @property
    def layers(self) -> list[int]:
        return [g for g in self.groups if g != REST]

    def single(self, model: str, part: Part, only: Optional[list[Group]] = None) -> Spec:
        return {g: {model: part} for g in (only if only is not None else self.groups)}

    # ------------------------------------------------------------- step 1
    def model_wise(self, model: str) -> Part:
        """Best (p, s) for one model on its own dev task; coarse grid, then the neighbours."""
        P, Sg = sorted(self.options.prune_grid), sorted(self.options.scale_grid)

        def value(i: int, j: int) -> float:
            return self.S(self.single(model, (P[i], Sg[j])), model)

        if self.options.search == "grid":
            points = [(i, j) for i in range(len(P)) for j in range(len(Sg))]
        else:
            points = [(i, j) for i in range(0, len(P), 2) for j in range(0, len(Sg), 2)]
            points += [(len(P) - 1, len(Sg) - 1)]
        self.prefetch([(self.single(model, (P[i], Sg[j])), model) for i, j in points])
        best = max(points, key=lambda ij: (value(*ij), ij))
        if self.options.search == "coarse_to_fine":
            while True:
                around = [(best[0] + di, best[1] + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)
                          if 0 <= best[0] + di < len(P) and 0 <= best[1] + dj < len(Sg)]
                self.prefetch([(self.single(model, (P[i], Sg[j])), model) for i, j in around])
                top = max(around, key=lambda ij: (value(*ij), ij))
                if top == best:
                    break
                best = top
        return P[best[0]], Sg[best[1]]

    # ------------------------------------------------------------- step 3
    def contributions(self, parts: dict[str, Part], merged: Spec,
                      specialist: Optional[dict] = None) -> dict[str, Any]:
        """α, β, c in both contexts, γ per (layer, model) and Γ per layer."""
        base: Spec = {}
        table: dict[str, Any] = {"specialist": specialist or {}, "merged": {}, "gamma": {},
                                 "Gamma": {}}
        self.prefetch(self._contribution_candidates(parts, merged, specialist is None))
        if specialist is None:
            for m in self.models:
                full = self.single(m, parts[m])
                s_full, s_base = self.S(full, m), self.S(base, m)
                for l in self.layers:
                    without = {g: v for g, v in full.items() if g != l}
                    alpha = s_full - self.S(without, m)
                    beta = self.S(self.single(m, parts[m], [l]), m) - s_base
                    table["specialist"][f"{l}:{m}"] = {"alpha": alpha, "beta": beta,
                                                       "c": alpha + beta}
        for l in self.layers:
            only_l = {l: merged[l]}
            for m in self.models:
                without_m = {**merged, l: {k: v for k, v in merged[l].items() if k != m}}
                alpha = self.S(merged, m) - self.S(without_m, m)
                beta = self.S(only_l, m) - self.S(base, m)
                table["merged"][f"{l}:{m}"] = {"alpha": alpha, "beta": beta, "c": alpha + beta}
                table["gamma"][f"{l}:{m}"] = (table["specialist"][f"{l}:{m}"]["c"]
                                              - (alpha + beta))
            # Γ sums the models' γ on the combine scale (a task's γ per unit of its gain)
            table["Gamma"][str(l)] = sum(table["gamma"][f"{l}:{m}"] * self.unit(m)
                                         for m in self.models)
        return table

    def _contribution_candidates(self, parts: dict[str, Part], merged: Spec,
                                 specialist_context: bool) -> list[tuple[Spec, str]]:
        """Every (candidate, model) pair contributions() scores, in one list."""
        items: list[tuple[Spec, str]] = []
        for m in self.models:
            items += [(merged, m), ({}, m)]
            if specialist_context:
                full = self.single(m, parts[m])
                items.append((full, m))
                for l in self.layers:
                    items += [({g: v for g, v in full.items() if g != l}, m),
                              (self.single(m, parts[m], [l]), m)]
            for l in self.layers:
                items += [({**merged, l: {k: v for k, v in merged[l].items() if k != m}}, m),
                          ({l: merged[l]}, m)]
        return items

    # ------------------------------------------------------------- step 4
    def resolve(self, parts: dict[str, Part], merged: Spec, table: dict[str, Any]) -> Spec:
        opts = self.options
        limit = opts.max_iterations if opts.max_iterations is not None else max(1, len(self.layers) // 2)
        done: set[int] = set()
        resolved = 0
        while resolved < limit:
            order = sorted((l for l in self.layers if l not in done),
                           key=lambda l: (-table["Gamma"][str(l)], l))
            if not order or table["Gamma"][str(order[0])] <= opts.epsilon + TOLERANCE:
                break
            l = order[0]
            done.add(l)
            gammas = {m: table["gamma"][f"{l}:{m}"] for m in self.models}
            proposal = dict(merged)
            if all(g > 0 for g in gammas.values()):
                case = "severe"
                keep = max(self.models,
                           key=lambda m: table["specialist"][f"{l}:{m}"]["c"] * self.unit(m))
                proposal[l] = {keep: merged[l][keep]} if keep in merged[l] else {}
                action = f"keep only {keep}"
            elif any(g > 0 for g in gammas.values()):
                case = "partial"
                h = opts.halving_factor
                proposal[l] = {m: ((p * h, s * h) if gammas[m] > 0 else (p, s))
                               for m, (p, s) in merged[l].items()}
                action = "re-prune and re-scale " + ", ".join(m for m in self.models if gammas[m] > 0)
            else:
                case, action = "mutual", "unchanged"
            if case != "mutual":
                self.prefetch([(spec, m) for spec in (merged, proposal) for m in self.models])
            before = {m: self.S(merged, m) for m in self.models}
            after = {m: self.S(proposal, m) for m in self.models} if case != "mutual" else before
            accepted = case != "mutual" and (not opts.greedy_acceptance
                                            or self.total(after) >= self.total(before) - TOLERANCE)
            self.decisions.append({"layer": l, "Gamma": table["Gamma"][str(l)], "gamma": gammas,
                                   "case": case, "action": action, "accepted": accepted,
                                   "dev_before": before, "dev_after": after})
            log.info("hi_merging: layer %s %s (%s): %s", l, case, action,
                     "accepted" if accepted else "kept as was")
            if accepted:
                merged = proposal
                resolved += 1
                if resolved % opts.recompute_every == 0:
                    table = self.contributions(parts, merged, table["specialist"])
            elif case == "mutual":
                continue
        return merged

    # ------------------------------------------------------------- the whole method
    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        with tqdm(desc="hi_merging candidates", unit="score") as self.progress:
            parts = {m: self.model_wise(m) for m in self.models}
            log.info("hi_merging: step 1 model-wise (prune, scale): %s", parts)
            merged: Spec = {g: dict(parts) for g in self.groups}  # step 2: initial TIES merge
            table = self.contributions(parts, merged)
            log.info("hi_merging: step 3 layer conflicts Γ: %s",
                     {l: round(v, 4) for l, v in table["Gamma"].items()})
            final = self.resolve(parts, merged, table)
            final_table = self.contributions(parts, final, table["specialist"])
        self.progress = None
        dev_final = {m: self.S(final, m) for m in self.models}
        reference = self._reference or self.reference()
        return {"model_wise": parts, "initial": merged, "final": final, "contributions": table,
                "contributions_after": final_table, "decisions": self.decisions,
                "dev_final": dev_final, "dev_reference": reference.describe(),
                "dev_gain": reference.mean_gain(dev_final)}


def mergekit_yaml(spec: Spec, layers: list[int], base: str, models: dict[str, str],
                  dtype: str) -> dict[str, Any]:
    """A candidate as one mergekit TIES config with explicit `layers.N.` filter entries (not
    interpolated lists, which would leak into embeddings and lm_head). Weight 0 = left out."""
    entries = []
    for name, path in models.items():
        weight, density = [], []
        for group in layers:
            p, s = spec.get(group, {}).get(name, (1.0, 0.0))
            weight.append({"filter": f"layers.{group}.", "value": s})
            density.append({"filter": f"layers.{group}.", "value": p})
        p, s = spec.get(REST, {}).get(name, (1.0, 0.0))
        weight.append({"value": s})   # everything else: embeddings, final norm, lm_head
        density.append({"value": p})
        entries.append({"model": path, "parameters": {"weight": weight, "density": density}})
    return {"merge_method": "ties", "base_model": base, "models": entries,
            "parameters": {"normalize": False, "lambda": 1.0}, "dtype": dtype,
            "tokenizer_source": "base"}
