"""`harness` command line: validate recipes, print plans, run stages."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.plan import STAGES, build_plan
from harness.recipe import Recipe, check_recipe_name, load_recipe, load_recipe_file, parse_recipe
from harness.stages import Context, run_stage
from harness.store import Store

log = logging.getLogger("harness")


def project_root() -> Path:
    """The checkout holding recipes/ and requirements/ (HARNESS_PROJECT overrides)."""
    if os.environ.get("HARNESS_PROJECT"):
        return Path(os.environ["HARNESS_PROJECT"]).resolve()
    cwd = Path.cwd()
    if (cwd / "recipes").is_dir() and (cwd / "requirements").is_dir():
        return cwd
    return Path(__file__).resolve().parents[1]


def runs_root(project: Path) -> Path:
    return Path(os.environ.get("HARNESS_RUNS_DIR", project / "runs")).resolve()


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    try:
        from rich.console import Console
        from rich.logging import RichHandler
        # Logs go to stderr (stdout carries plans and reports); wide lines when not a terminal.
        console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
        handler: logging.Handler = RichHandler(console=console, show_path=False,
                                               rich_tracebacks=False)
        fmt = "%(message)s"
    except ImportError:  # pragma: no cover - rich is in the eval env
        handler, fmt = logging.StreamHandler(), "%(levelname)s %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)


def _with_seeds(recipe: Recipe, seeds: str | None) -> Recipe:
    if not seeds:
        return recipe
    try:
        values = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise HarnessError(f"--seeds {seeds!r}: give comma-separated integers, e.g. 0,1,2") from None
    return parse_recipe({**recipe.model_dump(), "seeds": values}, f"{recipe.name} (--seeds)")


def _context(args) -> Context:
    project = project_root()
    recipe = _with_seeds(load_recipe(args.recipe, project / "recipes"), args.seeds)
    store = Store(runs_root(project), recipe.store_name)
    return Context(recipe, store, build_plan(recipe, project / "requirements"), project)


def cmd_validate(args) -> int:
    project = project_root()
    paths = [Path(p) for p in args.paths]
    if args.recipe:
        paths.append(project / "recipes" / f"{check_recipe_name(args.recipe)}.yaml")
    paths = paths or sorted((project / "recipes").glob("*.yaml"))
    failed = 0
    for path in paths:
        try:
            recipe = load_recipe_file(path)
            plan = build_plan(recipe, project / "requirements")
        except HarnessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        counts = ", ".join(f"{len(plan[s])} {s}" for s in STAGES)
        print(f"ok: {path} ({counts} units)")
    return 1 if failed else 0


def cmd_stage(args) -> int:
    ctx = _context(args)
    stages = STAGES if args.command == "run" else (args.command,)
    if args.dry_run:
        from harness.resources import report

        print("\n".join(report(ctx, stages)))
        return 0
    if args.command == "run":
        from harness.fetch import fetch
        fetch(ctx)
    for stage in stages:
        log.info("stage %s: recipe %s", stage, ctx.recipe.name)
        run_stage(ctx, stage)
    return 0


def cmd_fetch(args) -> int:
    from harness.fetch import fetch

    ctx = _context(args)
    for resolved in fetch(ctx):
        print(f"{resolved.ref}@{resolved.revision}")
    return 0


def cmd_publish(args) -> int:
    from harness.publish import publish_models

    for resolved in publish_models(_context(args), args.seed):
        print(f"{resolved.ref}@{resolved.revision}")
    return 0


def cmd_check(args) -> int:
    from harness.check import FAIL, run_checks

    ctx = _context(args)
    lines = run_checks(ctx)
    for line in lines:
        print(line)
    failed = [line for line in lines if line.status == FAIL]
    print(f"check {ctx.recipe.name}: " + (f"{len(failed)} check(s) failed" if failed else
                                          "every check passed"))
    return 1 if failed else 0


def cmd_reproduce(args) -> int:
    from harness.merge.reproduce import reproduce

    out = reproduce(Path(args.config), Path(args.out), runs_root(project_root()), args.random_seed)
    print(f"{out}: merged by mergekit from {args.config}")
    return 0


def cmd_convert(args) -> int:
    from harness.data.stage import convert_file
    report = convert_file(args.dataset, args.input, Path(args.outdir), args.overwrite)
    for split, count in sorted(report["counts"].items()):
        print(f"{Path(args.outdir) / (split + '.jsonl')}: {count} records")
    for reason, count in sorted(report["skipped"].items()):
        print(f"skipped {count} ({reason})")
    for split, count in sorted(report["duplicates_removed"].items()):
        print(f"removed {count} duplicate(s) from {split}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check recipe files against the schema")
    v.add_argument("paths", nargs="*", help="recipe YAML files (default: recipes/*.yaml)")
    v.add_argument("--recipe", help="a recipe by name")
    v.set_defaults(func=cmd_validate)
    c = sub.add_parser("convert", help="convert one local release file/folder to the "
                                       "normalised schema: OUTDIR/<split>.jsonl")
    c.add_argument("dataset", help="medqa, medmcqa, cmexam, cmb, cmb_clin, healthcaremagic, "
                                   "chatdoctor, cmedqa2 or medical_zh_sft")
    c.add_argument("input", help="a release file (or the cMedQA2 folder)")
    c.add_argument("outdir")
    c.add_argument("--overwrite", action="store_true", help="replace existing split files")
    c.set_defaults(func=cmd_convert)
    f = sub.add_parser("fetch", help="put every hub model and dataset the recipe names in the "
                                     "hub cache (download, or build the harness-tiny/* models)")
    f.add_argument("--recipe", default="tiny_en_zh", help="recipe name under recipes/")
    f.add_argument("--seeds", help=argparse.SUPPRESS)
    f.set_defaults(func=cmd_fetch)
    u = sub.add_parser("publish", help="put the recipe's trained base and specialists (one seed) "
                                       "in the hub cache as harness-tiny/<recipe>-<name>")
    u.add_argument("--recipe", default="tiny_en_zh", help="recipe name under recipes/")
    u.add_argument("--seed", type=int, default=0, help="whose specialists (default 0)")
    u.add_argument("--seeds", help=argparse.SUPPRESS)
    u.set_defaults(func=cmd_publish)
    k = sub.add_parser("check", help="can this host run the recipe: GPUs, dtype, disk, /dev/shm, "
                                     "RAM, hub access, envs, Ray (one line each)")
    k.add_argument("--recipe", default="tiny_en_zh", help="recipe name under recipes/")
    k.add_argument("--seeds", help="override the recipe's seeds, e.g. 0,1,2")
    k.set_defaults(func=cmd_check)
    r = sub.add_parser("reproduce", help="run a published mergekit YAML (leaderboard/<recipe>/"
                                         "models/) with mergekit, its runs/... and org/name@commit "
                                         "names resolved on this machine")
    r.add_argument("config", help="a published *_mergekit.yaml")
    r.add_argument("out", help="output folder (new or empty)")
    r.add_argument("--random-seed", type=int, default=None,
                   help="the seed in the YAML's header (DARE/DELLA draws)")
    r.set_defaults(func=cmd_reproduce)
    for name in (*STAGES, "run"):
        help_ = "all stages in order" if name == "run" else f"the {name} stage"
        s = sub.add_parser(name, help=help_)
        s.add_argument("--recipe", default="tiny_en_zh", help="recipe name under recipes/")
        s.add_argument("--dry-run", action="store_true",
                       help="print every unit of work with its content key; run nothing")
        s.add_argument("--seeds", help="override the recipe's seeds, e.g. 0,1,2")
        s.set_defaults(func=cmd_stage)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - not a user's error: one line, the trace on -v
        if args.verbose:
            raise
        first = (str(exc).splitlines() or [""])[0][:300]
        print(f"error: unexpected {type(exc).__name__}: {first} (a harness bug, not your input; "
              f"run `harness -v {args.command} ...` for the traceback and report it)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
