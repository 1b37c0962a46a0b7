"""The leaderboard stage on planted eval results (our own table logic), and index.html in
headless Chromium. The end-to-end run with every real tool is tests/test_end_to_end.py."""
import csv
import json
import math
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.plan import _point_label, build_plan
from harness.recipe import parse_recipe
from harness.stages import Context, run_stage
from harness.store import Store

from conftest import PROJECT

TASKS = {"synth_mcqa_en": ("synthetic_mcqa_en", 4), "synth_mcqa_zh": ("synthetic_mcqa_zh", 5)}
ITEMS = 60  # planted test items per task


def recipe_data(seeds) -> dict:
    data = yaml.safe_load((PROJECT / "recipes" / "tiny_en_zh_mcqa.yaml").read_text())
    data["multitask"]["enabled"] = False
    data["seeds"] = list(seeds)
    data["leaderboard"] = {"reference": [{"name": "paper", "source": "a paper, table 2",
                                          "scores": {"synth_mcqa_en": 99.0}}]}
    return data


def make_project(tmp: Path) -> Path:
    project = tmp / "project"
    project.mkdir()
    (project / "tasks").symlink_to(PROJECT / "tasks", target_is_directory=True)
    return project


def plant(ctx: Context, rng: random.Random, skip: set[str] = frozenset()) -> dict[str, dict]:
    """Merge manifests with dev scores, and one results.json per eval unit (random numbers)."""
    for unit in ctx.plan["merge"]:
        grid = [{"params": p, "point": _point_label(p),
                 "dev_scores": {"synth_mcqa_en": rng.random(), "synth_mcqa_zh": rng.random()}}
                for p in unit.inputs.get("grid", [{}])]
        for point in grid:
            point["dev_mean"] = sum(point["dev_scores"].values()) / 2
        best = max(grid, key=lambda p: p["dev_mean"])
        for point in grid:
            point["selected"] = point is best
        details = {"dev_scores": best["dev_scores"]}
        if "grid" in unit.inputs:
            details.update(params=best["params"], grid=grid)
        with ctx.store.build("merge", unit.key, unit.inputs, unit.versions, details) as tmp:
            (tmp / "mergekit.yaml").write_text("merge_method: planted\n")
    planted = {}
    for unit in ctx.plan["eval"]:
        if unit.key in skip:
            continue
        # per-item results (samples.jsonl), and the task's accuracy their mean, as lm-eval's
        p = {t: rng.random() for t in TASKS}
        items = {t: [float(rng.random() < p[t]) for _ in range(ITEMS)] for t in TASKS}
        results = {t: {"acc,none": sum(items[t]) / ITEMS, "acc_stderr,none": rng.random() / 50,
                       "alias": t} for t in TASKS}
        meta = {"n_options": {d: k for d, k in TASKS.values()}, "backend": "hf"}
        with ctx.store.build("eval", unit.key, unit.inputs, unit.versions) as tmp:
            (tmp / "results.json").write_text(json.dumps({"harness": meta, "results": results}))
            (tmp / "samples.jsonl").write_text("".join(
                json.dumps({"task": t, "doc_id": i, "acc": v}) + "\n"
                for t in TASKS for i, v in enumerate(items[t])))
        planted[unit.key] = results
    return planted


@pytest.fixture
def board(tmp_path):
    project = make_project(tmp_path)
    recipe = parse_recipe(recipe_data([0, 1]))
    ctx = Context(recipe, Store(tmp_path / "runs", recipe.name),
                  build_plan(recipe, PROJECT / "requirements"), project)
    planted = plant(ctx, random.Random(7))
    run_stage(ctx, "leaderboard")
    return ctx, planted, project / "leaderboard" / recipe.name


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def num(text: str):
    return float(text) if text not in ("", None) else None


def test_table_numbers_are_the_eval_numbers(board):
    ctx, planted, folder = board
    rows = {r["model"]: r for r in read_csv(folder / "leaderboard.csv")}
    names = {"base", "en_mcqa", "zh_mcqa", "linear", "task_arithmetic", "ties", "dare_ties",
             "dare_linear", "breadcrumbs", "della", "hi_merging", "paper (reported)"}
    reference = {n for n in rows if n.startswith("best single specialist (")}
    assert set(rows) - reference == names and len(reference) == 1
    # recompute every measured cell from the planted results.json files
    producers = {u.key: u for s in ("specialists", "merge") for u in ctx.plan[s]}
    expected: dict[str, list[dict]] = {}
    for unit in ctx.plan["eval"]:
        producer = producers.get(unit.inputs["model"]["key"])
        if producer is None or "corpus" in producer.inputs:  # the tiny base
            name = "base"
        elif "specialist" in producer.inputs:
            name = producer.inputs["specialist"]["name"]
        else:
            name = producer.inputs["method"]  # one unit per method and seed: its chosen point
        expected.setdefault(name, []).append(planted[unit.key])
    for name, results in expected.items():
        row = rows[name]
        assert row["status"] == "measured"
        assert len(results) == (1 if name == "base" else 2)
        for task, (_, k) in TASKS.items():
            values = [100 * r[task]["acc,none"] for r in results]
            mean = sum(values) / len(values)
            assert num(row[task]) == pytest.approx(mean, abs=1e-9)
            if len(values) > 1:
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                assert num(row[f"{task}_std"]) == pytest.approx(std, abs=1e-9)
            assert num(row[f"{task}_cc"]) == pytest.approx(100 * (mean / 100 - 1 / k) / (1 - 1 / k))
        avg = sum(num(row[t]) for t in TASKS) / len(TASKS)
        assert num(row["avg"]) == pytest.approx(avg)
        base_avg = num(rows["base"]["avg"])
        assert num(row["rel_improvement_pct"]) == pytest.approx(100 * (avg - base_avg) / base_avg)
        best = {t: max(num(rows[s][t]) for s in ("en_mcqa", "zh_mcqa")) for t in TASKS}
        assert num(row["expert_normalised"]) == pytest.approx(
            sum(100 * num(row[t]) / best[t] for t in TASKS) / len(TASKS))
    # average rank over the measured rows, the reported row unranked
    measured = [n for n in rows if n != "paper (reported)" and n not in reference]
    for name in measured:
        ranks = [1 + sum(num(rows[o][t]) > num(rows[name][t]) for o in measured) for t in TASKS]
        assert num(rows[name]["avg_rank"]) == pytest.approx(sum(ranks) / len(ranks))
    ref = rows["paper (reported)"]
    assert ref["kind"] == "reported" and num(ref["synth_mcqa_en"]) == 99.0
    assert ref["avg_rank"] == "" and ref["rel_improvement_pct"] == ""
    text = (folder / "README.md").read_text()
    assert "(reported)" in text and "missing" not in text.split("## Definitions")[0]


def test_outputs_and_provenance(board):
    ctx, _, folder = board
    for name in ("README.md", "leaderboard.csv", "leaderboard.json", "grid.csv", "index.html",
                 "plots/tasks.png", "plots/grid.png"):
        assert (folder / name).is_file(), name
    data = json.loads((folder / "leaderboard.json").read_text())
    ties = next(r for r in data["rows"] if r["model"] == "ties")
    records = json.loads((folder / ties["_link"]).read_text())
    assert {r["seed"] for r in records} == {0, 1} and len(records) == 2  # the chosen point a seed
    assert all((folder / f).is_file() for r in records for f in r["files"].values())
    assert all(r["model_manifest"]["inputs"]["method"] == "ties" for r in records)
    grid = read_csv(folder / "grid.csv")
    points = sum(len(u.inputs.get("grid", [{}])) for u in ctx.plan["merge"])
    assert len(grid) == points and points > len(ctx.plan["merge"])
    ties = [r for r in grid if r["model"] == "ties"]
    assert len(ties) == 6 and sum(r["selected"] == "True" for r in ties) == 2  # one per seed
    for seed in ("0", "1"):  # the chosen point is the best mean dev score; no test numbers
        rows = [r for r in ties if r["seed"] == seed]
        chosen = next(r for r in rows if r["selected"] == "True")
        assert float(chosen["dev_score"]) == max(float(r["dev_score"]) for r in rows)
        assert float(chosen["dev_score"]) == pytest.approx(
            (float(chosen["dev_synth_mcqa_en"]) + float(chosen["dev_synth_mcqa_zh"])) / 2)
    assert not set(grid[0]) & set(TASKS)
    # the stored leaderboard is cached; a deleted published folder comes back on the next run
    shutil.rmtree(folder)
    assert run_stage(ctx, "leaderboard") == []
    assert (folder / "README.md").is_file()


def test_missing_eval_is_shown_missing_and_not_cached(tmp_path):
    project = make_project(tmp_path)
    recipe = parse_recipe(recipe_data([0]))
    ctx = Context(recipe, Store(tmp_path / "runs", recipe.name),
                  build_plan(recipe, PROJECT / "requirements"), project)
    hi = next(u for u in ctx.plan["eval"] if "hi_merging" in u.name)
    plant(ctx, random.Random(3), skip={hi.key})
    run_stage(ctx, "leaderboard")
    folder = project / "leaderboard" / recipe.name
    rows = {r["model"]: r for r in read_csv(folder / "leaderboard.csv")}
    assert rows["hi_merging"]["status"] == "missing"
    assert rows["hi_merging"]["synth_mcqa_en"] == "" and rows["hi_merging"]["avg"] == ""
    assert re.search(r"\[hi_merging\]\([^)]*\) \(missing\) +\| missing +\| missing",
                     (folder / "README.md").read_text())
    assert not ctx.store.has("leaderboard", ctx.plan["leaderboard"][0].key)

    # the eval arrives: the next run completes, caches and publishes the table
    with ctx.store.build("eval", hi.key, hi.inputs, hi.versions) as tmp:
        (tmp / "results.json").write_text(json.dumps({"harness": {}, "results": {
            t: {"acc,none": 0.5} for t in TASKS}}))
    assert run_stage(ctx, "leaderboard")
    rows = {r["model"]: r for r in read_csv(folder / "leaderboard.csv")}
    assert rows["hi_merging"]["status"] == "measured" and float(rows["hi_merging"]["avg"]) == 50.0
    # a second seed before its evals exist: the complete published table is kept, and the
    # partial one goes aside
    recipe2 = parse_recipe(recipe_data([0, 1]))
    ctx2 = Context(recipe2, ctx.store, build_plan(recipe2, PROJECT / "requirements"), project)
    run_stage(ctx2, "leaderboard")
    assert read_csv(folder / "leaderboard.csv") == list(rows.values())
    partial = ctx.store.stage_dir("leaderboard") / "partial" / "leaderboard.csv"
    assert {r["model"]: r for r in read_csv(partial)}["hi_merging"]["status"] == "partial"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make setup installs it)")
def test_index_html_renders_in_headless_chromium(board, tmp_path):
    from PIL import Image

    _, _, folder = board
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (folder / "index.html").as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1400,1000", url],
                   check=True, capture_output=True, timeout=120)
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert '<div id="leaderboard"><table>' in dom and "hi_merging" in dom and "<img" in dom
    image = Image.open(shot).convert("L")
    assert image.size == (1400, 1000)
    lo, hi = image.getextrema()
    assert hi - lo > 100  # text and table lines, not a blank page


# an absolute path of the machine that made a file: home, temp, project or mount folders
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:root|home|tmp|work|Users|private|var|mnt|opt|srv|scratch)/")


def test_published_leaderboards_hold_no_machine_path():
    """Everything under leaderboard/ can be read and re-run from any checkout."""
    project = Path(__file__).resolve().parents[1]
    files = [p for p in (project / "leaderboard").rglob("*") if p.is_file() and p.suffix != ".png"]
    assert len(files) > 20
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert str(project) not in text, path
        found = MACHINE_PATH.search(text)
        assert found is None, f"{path}: {text[max(0, found.start() - 60):found.end() + 60]}"


def test_a_run_with_fewer_seeds_never_replaces_the_published_table(board, tmp_path, caplog):
    """`make` on a fresh clone runs the recipe's one seed: it stores its leaderboard and says
    where, and the published multi-seed table stays as it is."""
    ctx, _, folder = board
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    recipe = parse_recipe(recipe_data([0]))
    one = Context(recipe, Store(tmp_path / "fresh", recipe.name),
                  build_plan(recipe, PROJECT / "requirements"), ctx.project)
    plant(one, random.Random(3))
    with caplog.at_level("WARNING", logger="harness"):
        run_stage(one, "leaderboard")
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    stored = one.store.path("leaderboard", one.plan["leaderboard"][0].key)
    assert json.loads((stored / "leaderboard.json").read_text())["seeds"] == [0]
    assert "is the published table of seeds 0,1; this run has seeds 0" in caplog.text
    assert str(stored) in caplog.text and "SEEDS=0,1" in caplog.text
    # the same seeds (or more) replace it as before
    two = Context(ctx.recipe, ctx.store, ctx.plan, ctx.project)
    shutil.rmtree(ctx.store.path("leaderboard", ctx.plan["leaderboard"][0].key))
    (folder / "leaderboard.json").write_text(json.dumps({"seeds": [0, 1], "complete": True}))
    run_stage(two, "leaderboard")
    assert json.loads((folder / "leaderboard.json").read_text())["leaderboard_key"] == \
        ctx.plan["leaderboard"][0].key


def items_of(ctx, row: str) -> dict:
    """seed -> task -> [0/1 per item], read straight from the planted samples.jsonl."""
    from harness.leaderboard.collect import collect

    out = {}
    for m in collect(ctx):
        if m.row == row:
            lines = (ctx.store.path("eval", m.eval_unit.key) / "samples.jsonl").read_text()
            for line in lines.splitlines():
                rec = json.loads(line)
                out.setdefault(m.seed, {}).setdefault(rec["task"], {})[rec["doc_id"]] = rec["acc"]
    return out


def test_paired_intervals_and_mcnemar_are_recomputed_from_samples(board):
    """paired.csv: each merge against the best baseline; recomputed here from samples.jsonl
    with a plain loop: the mean difference, the bootstrap interval (same draws), McNemar's p."""
    import numpy as np

    ctx, _, folder = board
    rows = {r["model"]: r for r in read_csv(folder / "leaderboard.csv")}
    grids = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
             "della"]
    best = max(grids, key=lambda g: float(rows[g]["avg"]))
    paired = read_csv(folder / "paired.csv")
    assert paired and {p["against"] for p in paired} == {best}
    assert {p["model"] for p in paired} == (set(grids) | {"hi_merging"}) - {best}
    for p in paired:
        a, b = items_of(ctx, p["model"]), items_of(ctx, best)
        seeds = sorted(a)
        diff = np.array([[100 * (a[s][p["task"]][i] - b[s][p["task"]][i]) for i in range(ITEMS)]
                         for s in seeds])
        assert float(p["diff"]) == pytest.approx(diff.mean())
        rng = np.random.default_rng(0)
        means = []
        for _ in range(2000):
            ss = rng.integers(0, len(seeds), len(seeds))
            ii = rng.integers(0, ITEMS, ITEMS)
            means.append(diff[np.ix_(ss, ii)].mean())
        low, high = np.percentile(means, [2.5, 97.5])
        assert float(p["ci_low"]) == pytest.approx(low) and float(p["ci_high"]) == pytest.approx(high)
        only_a = sum(a[s][p["task"]][i] > b[s][p["task"]][i] for s in seeds for i in range(ITEMS))
        only_b = sum(a[s][p["task"]][i] < b[s][p["task"]][i] for s in seeds for i in range(ITEMS))
        n, k = only_a + only_b, min(only_a, only_b)
        expected = min(1.0, 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2 ** n) if n else 1.0
        assert (int(p["only_row"]), int(p["only_best"])) == (only_a, only_b)
        assert float(p["mcnemar_p"]) == pytest.approx(expected)
        assert p["verdict"] == ("better" if low > 0 else "worse" if high < 0
                                else "not shown different")
    readme = (folder / "README.md").read_text()
    assert f"Paired comparisons with the best baseline ({best})" in readme


def test_mcnemar_exact_matches_known_values():
    from harness.leaderboard.stats import mcnemar_exact

    assert mcnemar_exact(10, 2) == pytest.approx(0.03857421875)  # 2 x P(X <= 2), X ~ B(12, .5)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 7) == pytest.approx(2 / 2 ** 7)


def test_best_single_specialist_is_a_reference_row(board):
    _, _, folder = board
    rows = read_csv(folder / "leaderboard.csv")
    specialists = [r for r in rows if r["kind"] == "specialist"]
    best = max(specialists, key=lambda r: float(r["avg"]))
    ref = next(r for r in rows if r["kind"] == "best_specialist")
    assert ref["model"] == f"best single specialist ({best['model']})"
    assert ref["avg"] == best["avg"] and ref["avg_rank"] == ""
