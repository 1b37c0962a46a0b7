"""Hi-Merging's contribution scoring: resident vLLM engine vs the naive path (make bench).

The same candidates (the contribution analysis' 'specialist without layer l' and 'only layer
l' candidates of the tiny recipe's shape) are scored twice in one run:
- naive, as the authors' scripts do: write the candidate with mergekit, start a fresh vLLM
  engine on it, score the dev set;
- resident: build the candidate's changed tensors in memory, push them into ONE engine in
  place, score.
Prints whether the scores are equal, seconds per candidate each way, the speedup, and the share
of resident per-candidate time that is not forward passes (merge math + swap), for the same
dev items in both MCQA formats: cloze (the tiny recipe: every option's text is a prompt of its
own, 4-5 per item) and lettered (MedQA/CMExam, the GPU recipes: one forward pass per item).
The cloze forward costs several times more, so the same engine-start saving is a smaller ratio.
"""
from __future__ import annotations

import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_speed import family  # noqa: E402
from results import record  # noqa: E402

DEV_ITEMS = 200


def measure(records, specs, candidates, base, named, tmp, label):
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from harness.merge.config import validate
    from harness.merge.hi_merging import mergekit_yaml
    from harness.scoring.vllm_scorer import VLLMScorer

    # naive path
    naive_scores, naive_s = [], []
    for i, spec in enumerate(specs):
        start = time.perf_counter()
        config = mergekit_yaml(spec, candidates.engine.layers, str(base),
                               {k: str(v) for k, v in named.items()}, "float32")
        run_merge(validate(config), f"{tmp}/{label}{i}", MergeOptions(quiet=True))
        engine = VLLMScorer(f"{tmp}/{label}{i}", max_model_len=512)
        naive_scores.append(engine.mcqa_accuracy(records))
        engine.close()
        del engine
        gc.collect()
        naive_s.append(time.perf_counter() - start)
    # resident path
    t0 = time.perf_counter()
    engine = VLLMScorer(str(base), max_model_len=512)
    start_s = time.perf_counter() - t0
    resident_scores, resident_s, merge_s, swap_s, forward_s = [], [], [], [], []
    for spec in specs:
        start = time.perf_counter()
        tensors = candidates.build(spec)
        built = time.perf_counter()
        swap_before = engine.swap_seconds
        engine.load(tensors)
        loaded = time.perf_counter()
        resident_scores.append(engine.mcqa_accuracy(records))
        done = time.perf_counter()
        merge_s.append(built - start)
        swap_s.append(engine.swap_seconds - swap_before)
        forward_s.append(done - loaded)
        resident_s.append(done - start)
    engine.close()
    equal = naive_scores == resident_scores
    naive, resident = statistics.median(naive_s), statistics.median(resident_s)
    share = (sum(merge_s) + sum(swap_s)) / sum(resident_s)
    print(f"contribution scoring, {label} MCQA, {len(specs)} candidates x {DEV_ITEMS} dev items:")
    print(f"  scores equal (naive vs resident): {'yes' if equal else 'no'}")
    print(f"  naive (mergekit write + fresh engine + score): {naive:.2f} s per candidate (median)")
    print(f"  resident (in-memory merge + in-place swap + score): {resident:.3f} s per candidate "
          f"(median; one engine start of {start_s:.1f} s for the whole search)")
    print(f"  speedup: {naive / resident:.1f}x")
    print(f"  non-forward share of resident time (merge math + swap): {share:.1%} "
          f"(merge {statistics.median(merge_s):.3f} s, swap {statistics.median(swap_s):.3f} s, "
          f"forward {statistics.median(forward_s):.3f} s per candidate)", flush=True)
    return {"naive_s": naive, "resident_s": resident, "speedup": naive / resident,
            "non_forward_share": share, "scores_equal": equal, "engine_start_s": start_s}


def main() -> None:
    from harness.data import synthetic
    from harness.merge.hi_merging import Candidates
    from harness.merge.memory import InMemoryMerger

    with tempfile.TemporaryDirectory() as tmp:
        base, models = family(Path(tmp))
        named = {f"m{i}": m for i, m in enumerate(models)}
        candidates = Candidates(InMemoryMerger(base, named))
        cloze = synthetic.dataset("en", "mcqa", {"train": 1, "dev": DEV_ITEMS, "test": 1}, 0)["dev"]
        lettered = [{k: v for k, v in r.items() if k != "answer_format"} for r in cloze]
        part = {"m0": (0.5, 1.0)}
        specs = []
        for layer in candidates.engine.layers[:2]:
            specs.append({g: part for g in candidates.groups if g != layer})   # without layer
            specs.append({layer: part})                                         # only layer
        c = measure(cloze, specs, candidates, base, named, tmp, "cloze")
        L = measure(lettered, specs, candidates, base, named, tmp, "lettered")
    record(contribution_candidates=len(specs), contribution_naive_s=c["naive_s"],
           contribution_resident_s=c["resident_s"], contribution_speedup=c["speedup"],
           non_forward_share=c["non_forward_share"], scores_equal=c["scores_equal"],
           resident_engine_start_s=c["engine_start_s"],
           contribution_naive_s_lettered=L["naive_s"], contribution_resident_s_lettered=L["resident_s"],
           contribution_speedup_lettered=L["speedup"],
           non_forward_share_lettered=L["non_forward_share"],
           scores_equal_lettered=L["scores_equal"])


if __name__ == "__main__":
    main()
