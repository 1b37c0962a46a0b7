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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from harness.merge.gains import Reference
from harness.merge_methods import HiMergingOptions
from harness.merge.memory import InMemoryMerger

log = logging.getLogger("harness")
REST = "rest"  # embeddings, final norm, lm_head: merged with the model-wise settings
Group = Any    # int layer index or REST
Part = tuple[float, float]  # (density p, scale s)
Spec = dict[Group, dict[str, Part]]
# Sums on the combine scale that differ by less than this are equal: a rescaled task must not
# turn an exact tie (the same dev answers) into a loss through float rounding.
TOLERANCE = 1e-9


Options = HiMergingOptions  # every option typed and documented in one place


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
    # dev items scored per task: the standard errors of `sparsest` and `epsilon_se` (a task
    # left out, or a score outside [0, 1] such as a log-likelihood, has none: 0)
    items: dict[str, int] = field(default_factory=dict)
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

    def scores(self, spec: Spec) -> dict[str, float]:
        """One candidate on every model's task."""
        return {m: self.S(spec, m) for m in self.models}

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

    def stderr(self, model: str, score: float) -> float:
        """A dev score's standard error: a mean over n items of a per-item score in [0, 1]
        (accuracy, ROUGE-L) has a standard deviation of at most sqrt(s (1 - s)), exact for
        accuracy. Unknown (0) for a log-likelihood or an unknown item count."""
        n = self.items.get(self.tasks[model], 0)
        if not n or not 0.0 <= score <= 1.0:
            return 0.0
        return math.sqrt(score * (1.0 - score) / n)

    # ------------------------------------------------------------- one scale across tasks
    def reference(self) -> Reference:
        """Each model's task scored on the base and on the whole specialist (p = s = 1)."""
        self.prefetch([(spec, m) for m in self.models
                       for spec in ({}, self.single(m, (1.0, 1.0)))])
        return Reference({m: self.S({}, m) for m in self.models},
                         {m: self.S(self.single(m, (1.0, 1.0)), m) for m in self.models})

    def ref(self) -> Reference:
        if self._reference is None:
            self._reference = self.reference()
        return self._reference

    def unit(self, model: str) -> float:
        """What one point of `model`'s dev score is worth when tasks are summed: 1 / its
        specialist's gain over the base (`combine: normalised_gain`), or 1 (`raw`)."""
        return 1.0 if self.options.combine == "raw" else self.ref().unit(model)

    def total(self, scores: dict[str, float]) -> float:
        """Scores of one candidate, one per model's task, summed on the combine scale."""
        return sum(s * self.unit(m) for m, s in scores.items())

    def accepts(self, before: dict[str, float], after: dict[str, float],
                start: dict[str, float]) -> bool:
        """Option `acceptance`: whether a change from `before` to `after` is kept (`start`:
        the scores when resolution began)."""
        rule, ref = self.options.acceptance, self.ref()
        if rule == "always":
            return True
        if rule == "sum":
            return sum(after.values()) >= sum(before.values()) - TOLERANCE
        kept = ref.mean_gain(after) >= ref.mean_gain(before) - TOLERANCE
        if rule == "mean_gain":
            return kept
        floor = self.options.acceptance_margin
        return kept and all(ref.gain(m, after[m]) >= ref.gain(m, start[m]) - floor - TOLERANCE
                            for m in self.models)

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
    def _grid_search(self, spec_at: Callable[[Part], Spec], value_of: Callable[[Spec], float],
                     needs: Callable[[Spec], list[tuple[Spec, str]]]
                     ) -> tuple[tuple[int, int], dict[tuple[int, int], float]]:
        """The best (i, j) of prune_grid x scale_grid by `value_of`, coarse grid then the
        neighbours (`search`), and every point it scored."""
        P, Sg = sorted(self.options.prune_grid), sorted(self.options.scale_grid)
        seen: dict[tuple[int, int], float] = {}

        def visit(points: list[tuple[int, int]]) -> tuple[int, int]:
            specs = {ij: spec_at((P[ij[0]], Sg[ij[1]])) for ij in points}
            self.prefetch([item for spec in specs.values() for item in needs(spec)])
            for ij, spec in specs.items():
                if ij not in seen:
                    seen[ij] = value_of(spec)
            return max(points, key=lambda ij: (seen[ij], ij))

        if self.options.search == "grid":
            return visit([(i, j) for i in range(len(P)) for j in range(len(Sg))]), seen
        best = visit([(i, j) for i in range(0, len(P), 2) for j in range(0, len(Sg), 2)]
                     + [(len(P) - 1, len(Sg) - 1)])
        while True:
            top = visit([(best[0] + di, best[1] + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)
                         if 0 <= best[0] + di < len(P) and 0 <= best[1] + dj < len(Sg)])
            if top == best:
                return best, seen
            best = top

    def model_wise(self, model: str) -> Part:
        """Best (p, s) for one model on its own dev task, the model alone (`step1: alone`), or
        the sparsest point within one standard error of that best (`sparsest`)."""
        P, Sg = sorted(self.options.prune_grid), sorted(self.options.scale_grid)
        best, seen = self._grid_search(lambda part: self.single(model, part),
                                       lambda spec: self.S(spec, model),
                                       lambda spec: [(spec, model)])
        if self.options.step1 == "sparsest":
            floor = seen[best] - self.stderr(model, seen[best]) - TOLERANCE
            # fewest entries kept first, then the smaller scale, then the higher score
            best = min((ij for ij, v in seen.items() if v >= floor),
                       key=lambda ij: (P[ij[0]], Sg[ij[1]], -seen[ij]))
        return P[best[0]], Sg[best[1]]

    def model_wise_merged(self) -> dict[str, Part]:
        """`step1: merged`: each model's (p, s) chosen, in the recipe's order, on every task
        of the merge of all models, the others at their current points (first p = s = 1)."""
        P, Sg = sorted(self.options.prune_grid), sorted(self.options.scale_grid)
        parts = {m: (1.0, 1.0) for m in self.models}
        for model in self.models:
            def spec_at(part: Part, model: str = model) -> Spec:
                return {g: {**parts, model: part} for g in self.groups}

            best, _ = self._grid_search(spec_at, lambda spec: self.total(self.scores(spec)),
                                        lambda spec: [(spec, m) for m in self.models])
            parts[model] = (P[best[0]], Sg[best[1]])
        return parts

    def step1(self) -> dict[str, Part]:
        if self.options.stages == "layer_wise_only":
            return {m: (1.0, 1.0) for m in self.models}
        if self.options.step1 == "merged":
            return self.model_wise_merged()
        return {m: self.model_wise(m) for m in self.models}

    # ------------------------------------------------------------- step 3
    def _terms(self, parts: dict[str, Part], merged: Spec, context: str, l: int, m: str
               ) -> tuple[Spec, Spec, Spec, Spec]:
        """The four candidates of c = α + β for (layer l, model m): α = S(with) - S(without),
        β = S(l on its own) - S(reference). Option `beta`: the reference is the base, or the
        base with the same context's non-layer tensors."""
        if context == "specialist":
            whole = self.single(m, parts[m])
            without = {g: v for g, v in whole.items() if g != l}
        else:
            whole = merged
            without = {**merged, l: {k: v for k, v in merged[l].items() if k != m}}
        if self.options.beta == "with_non_layer":
            rest = {REST: whole[REST]} if REST in whole else {}
            return whole, without, {l: whole[l], **rest}, rest
        return whole, without, {l: whole[l]}, {}

    def contributions(self, parts: dict[str, Part], merged: Spec,
                      specialist: Optional[dict] = None) -> dict[str, Any]:
        """α, β, c in both contexts, γ per (layer, model) and Γ per layer, each with its
        standard error (independent scores assumed: an upper bound for paired items)."""
        table: dict[str, Any] = {"specialist": specialist or {}, "merged": {}, "gamma": {},
                                 "Gamma": {}, "gamma_se": {}, "Gamma_se": {}}
        contexts = ["merged"] + (["specialist"] if specialist is None else [])
        terms = {(c, l, m): self._terms(parts, merged, c, l, m)
                 for c in contexts for l in self.layers for m in self.models}
        self.prefetch([(spec, m) for (_, _, m), specs in terms.items() for spec in specs])
        for (context, l, m), (whole, without, alone, ref) in terms.items():
            s = [self.S(spec, m) for spec in (whole, without, alone, ref)]
            alpha, beta = s[0] - s[1], s[2] - s[3]
            var = sum(self.stderr(m, v) ** 2 for v in s)
            table[context][f"{l}:{m}"] = {"alpha": alpha, "beta": beta, "c": alpha + beta,
                                          "var": var}
        for l in self.layers:
            for m in self.models:
                key = f"{l}:{m}"
                sp, mg = table["specialist"][key], table["merged"][key]
                table["gamma"][key] = sp["c"] - mg["c"]
                table["gamma_se"][key] = math.sqrt(sp.get("var", 0.0) + mg["var"])
            # Γ sums the models' γ on the combine scale (a task's γ per unit of its gain)
            table["Gamma"][str(l)] = sum(table["gamma"][f"{l}:{m}"] * self.unit(m)
                                         for m in self.models)
            table["Gamma_se"][str(l)] = math.sqrt(sum(
                (table["gamma_se"][f"{l}:{m}"] * self.unit(m)) ** 2 for m in self.models))
        return table

    # ------------------------------------------------------------- step 4
    def threshold(self, table: dict[str, Any], l: int) -> float:
        """Γ a layer must exceed to be resolved: ε + epsilon_se standard errors of Γ."""
        return self.options.epsilon + self.options.epsilon_se * table["Gamma_se"][str(l)]

    def propose(self, l: int, merged: Spec, table: dict[str, Any]
                ) -> tuple[str, str, Spec]:
        """(case, action, proposal) for layer l, by the signs of its γ."""
        opts = self.options
        gammas = {m: table["gamma"][f"{l}:{m}"] for m in self.models}
        if all(g > 0 for g in gammas.values()):
            if opts.severe == "score_each" and merged[l]:
                options = {m: {**merged, l: {m: merged[l][m]}} for m in merged[l]}
                self.prefetch([(spec, m) for spec in options.values() for m in self.models])
                keep = max(options, key=lambda m: (self.total(self.scores(options[m])), m))
            else:
                keep = max(self.models,
                           key=lambda m: table["specialist"][f"{l}:{m}"]["c"] * self.unit(m))
            return "severe", f"keep only {keep}", {
                **merged, l: {keep: merged[l][keep]} if keep in merged[l] else {}}
        if any(g > 0 for g in gammas.values()):
            fell = opts.partial == "shrink_fell"
            shrink = [m for m in self.models if (gammas[m] > 0) == fell and m in merged[l]]
            h = opts.halving_factor
            return "partial", "re-prune and re-scale " + ", ".join(shrink), {
                **merged, l: {m: ((p * h, s * h) if m in shrink else (p, s))
                              for m, (p, s) in merged[l].items()}}
        return "mutual", "unchanged", merged

    def resolve(self, parts: dict[str, Part], merged: Spec, table: dict[str, Any]
                ) -> tuple[Spec, dict[str, Any]]:
        """Passes over the layers, most conflicting first; each resolves at most
        `max_iterations` layers; γ is recomputed every `recompute_every` accepted changes and
        before every further pass. Returns the final spec and the last contribution table."""
        opts = self.options
        limit = opts.max_iterations or max(1, len(self.layers) // 2)
        start = self.scores(merged)
        accepted_total = 0
        for number in range(opts.passes or 10):
            if number:
                table = self.contributions(parts, merged, table["specialist"])
            done: set[int] = set()
            resolved = 0
            while resolved < limit:
                order = sorted((l for l in self.layers if l not in done),
                               key=lambda l: (-table["Gamma"][str(l)], l))
                if not order or table["Gamma"][str(order[0])] <= self.threshold(table, order[0]) + TOLERANCE:
                    break
                l = order[0]
                done.add(l)
                case, action, proposal = self.propose(l, merged, table)
                # a proposal equal to the layer as it is (a severe layer already down to its
                # keeper, no model to shrink) changes nothing: not a resolution
                changes = case != "mutual" and proposal != merged
                if changes:
                    self.prefetch([(spec, m) for spec in (merged, proposal) for m in self.models])
                before = self.scores(merged)
                after = self.scores(proposal) if changes else before
                accepted = changes and self.accepts(before, after, start)
                self.decisions.append({
                    "pass": number + 1, "layer": l, "Gamma": table["Gamma"][str(l)],
                    "Gamma_se": table["Gamma_se"][str(l)],
                    "gamma": {m: table["gamma"][f"{l}:{m}"] for m in self.models},
                    "case": case, "action": action, "changes": changes, "accepted": accepted,
                    "dev_before": before, "dev_after": after})
                log.info("hi_merging: pass %d layer %s %s (%s): %s", number + 1, l, case, action,
                         "accepted" if accepted else "kept as was")
                if accepted:
                    merged = proposal
                    resolved += 1
                    accepted_total += 1
                    if accepted_total % opts.recompute_every == 0:
                        table = self.contributions(parts, merged, table["specialist"])
            if not resolved:
                break
        return merged, table

    # ------------------------------------------------------------- the whole method
    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        with tqdm(desc="hi_merging candidates", unit="score") as self.progress:
            parts = self.step1()
            log.info("hi_merging: step 1 model-wise (prune, scale): %s", parts)
            merged: Spec = {g: dict(parts) for g in self.groups}  # step 2: initial TIES merge
            table = final_table = None
            final = merged
            if self.options.stages != "model_wise_only":
                table = self.contributions(parts, merged)
                log.info("hi_merging: step 3 layer conflicts Γ: %s",
                         {l: round(v, 4) for l, v in table["Gamma"].items()})
                final, _ = self.resolve(parts, merged, table)
                final_table = self.contributions(parts, final, table["specialist"])
        self.progress = None
        dev_final = self.scores(final)
        reference = self.ref()
        return {"model_wise": parts, "initial": merged, "final": final, "contributions": table,
                "contributions_after": final_table, "decisions": self.decisions,
                "dev_final": dev_final, "dev_reference": reference.describe(),
                "dev_gain": reference.mean_gain(dev_final)}


def mergekit_yaml(spec: Spec, layers: list[int], base: str, models: dict[str, str],
                  dtype: str, tokenizer: Optional[dict[str, Any]] = None) -> dict[str, Any]:
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
            **({"tokenizer": tokenizer} if tokenizer else {})}  # merge/vocab.py
