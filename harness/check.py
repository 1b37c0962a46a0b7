"""`harness check --recipe NAME`: can this host run the recipe? One screen, before any GPU-hour.

One line per check: GPUs (count and memory against the plan), dtype support, free disk against
the plan's still-to-write total, /dev/shm against the vLLM scorer's swaps, host RAM, every hub
model and dataset id (reachable, licence accepted, or in the cache offline), the two envs
against their lock files, and the Ray cluster when one is set. A failing check names its fix;
the command exits 1 if any failed. Sizes come from harness/resources.py (the dry run's).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness import hub, resources, tiny_hub
from harness.executor import kind as executor_kind
from harness.stagedefs import STAGES
from harness.versions import lock_path, normalize, read_lock

OK, FAIL, SKIP = "ok", "FAIL", "skip"
SHM = Path("/dev/shm")


@dataclass
class Line:
    status: str
    name: str
    text: str

    def __str__(self) -> str:
        return f"{self.status:<4}  {self.name}: {self.text}"


def _gib(n: float) -> str:
    return f"{n / resources.GiB:.1f} GiB"


def cuda_devices() -> list[tuple[str, int]]:
    """(name, total memory) of every CUDA GPU this process sees."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory)
            for i in range(torch.cuda.device_count())]


def bf16_supported() -> bool:
    import torch

    return torch.cuda.is_bf16_supported()


def free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_gpus(ctx, needs: dict[str, int]) -> list[Line]:
    spec = ctx.recipe.executor
    if not spec.num_gpus:
        return [Line(SKIP, "gpu", "the recipe asks for none (executor.num_gpus: 0): CPU run")]
    want = math.ceil(spec.num_gpus) * (spec.workers if executor_kind(spec) == "local" else 1)
    gpus = cuda_devices()
    if len(gpus) < want:
        return [Line(FAIL, "gpu", f"the recipe asks for {want} GPU(s) (executor.num_gpus x "
                     f"workers) but this host has {len(gpus)} CUDA GPU(s); run on a GPU host "
                     "(docker run --gpus all --ipc=host ...), or set executor.num_gpus: 0 for a "
                     "CPU run")]
    lines = [Line(OK, "gpu", f"{len(gpus)} x {gpus[0][0]}")]
    smallest = min(total for _, total in gpus)
    if needs["gpu"] > smallest:
        lines.append(Line(FAIL, "gpu memory", f"the largest unit needs about {_gib(needs['gpu'])} "
                          f"a GPU, the smallest GPU has {_gib(smallest)}; use larger GPUs or "
                          "spread a model with eval.tensor_parallel_size"))
    else:
        lines.append(Line(OK, "gpu memory", f"needs about {_gib(max(needs['gpu'], 0))} a GPU, "
                          f"has {_gib(smallest)}"))
    return lines


def check_dtype(ctx) -> Line:
    dtype = ctx.recipe.base.dtype
    if dtype == "float32":
        return Line(OK, "dtype", "float32")
    if not cuda_devices():
        return Line(SKIP, "dtype", f"{dtype} not checked on a GPU (none here); the CPU runs it "
                    "slowly")
    if dtype == "bfloat16" and not bf16_supported():
        return Line(FAIL, "dtype", "bfloat16 is not supported by this GPU (Ampere or newer "
                    "needed); set base.dtype: float16 or use a newer GPU")
    return Line(OK, "dtype", f"{dtype} supported")


def check_disk(ctx, needs: dict[str, int]) -> Line:
    need = needs["disk"] + _download_bytes(ctx)
    free = free_bytes(ctx.store.root)
    if needs["disk"] < 0:
        return Line(SKIP, "disk", "the base's size is unknown (not in the hub cache, no size in "
                    f"its name); {_gib(free)} free at {ctx.store.root}")
    if need * 1.1 > free:
        return Line(FAIL, "disk", f"the plan still writes about {_gib(need)} (harness run "
                    f"--dry-run), {ctx.store.root} has {_gib(free)} free; free space or set "
                    "HARNESS_RUNS_DIR (and HF_HOME) to a larger volume")
    return Line(OK, "disk", f"needs about {_gib(need)}, {_gib(free)} free")


def _download_bytes(ctx) -> int:
    """The base's weights, when they are still to be downloaded into the hub cache."""
    base = ctx.recipe.base
    if base.kind != "hub" or hub.cached_revision(base.model, base.revision):
        return 0
    size = resources.base_size(ctx).bytes(base.dtype)
    return size or 0


def shm_free() -> int:
    return shutil.disk_usage(SHM).free if SHM.is_dir() else 0


def check_shm(ctx, needs: dict[str, int]) -> Line:
    if needs["shm"] == 0:
        return Line(SKIP, "shm", "the scorer is not vLLM: nothing is staged in /dev/shm")
    free = shm_free()
    if needs["shm"] < 0:
        return Line(SKIP, "shm", f"the base's size is unknown; /dev/shm has {_gib(free)} free")
    if needs["shm"] * 1.1 > free:
        size = math.ceil(needs["shm"] * 1.2 / resources.GiB)
        return Line(FAIL, "shm", f"the vLLM scorer stages a candidate's weights (about "
                    f"{_gib(needs['shm'])}) through /dev/shm, which has {_gib(free)} free; run "
                    f"docker with --ipc=host (or --shm-size={size}g)")
    return Line(OK, "shm", f"needs about {_gib(needs['shm'])}, /dev/shm has {_gib(free)} free")


def check_ram(needs: dict[str, int]) -> Line:
    import psutil

    total = psutil.virtual_memory().total
    if needs["ram"] < 0:
        return Line(SKIP, "ram", f"the base's size is unknown; {_gib(total)} here")
    if needs["ram"] > total:
        return Line(FAIL, "ram", f"the largest unit needs about {_gib(needs['ram'])} of host "
                    f"memory, this host has {_gib(total)}; use a larger host")
    return Line(OK, "ram", f"needs about {_gib(needs['ram'])}, has {_gib(total)}")


def _hub_access(ref: str, revision, repo_type: str) -> str | None:
    """None when the hub serves `ref` to this token, else why not (one line)."""
    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        auth_check(ref, repo_type=repo_type)
    except GatedRepoError:
        return ("gated: accept its licence on its hub page with your account and set HF_TOKEN")
    except RepositoryNotFoundError:
        return "not found on the hub (or private): check the id, or set HF_TOKEN"
    except Exception as exc:  # noqa: BLE001 - no network, proxy, DNS: one line, no traceback
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        return f"the hub is not reachable ({first}); check the network, or run offline with a " \
               "filled hub cache (HF_HUB_OFFLINE=1)"
    return None


def check_hub(ctx) -> list[Line]:
    from harness.fetch import wanted

    lines = []
    for field, ref, revision, repo_type, _ in wanted(ctx):
        cached = hub.cached_revision(ref, revision, repo_type)
        name = f"hub {field}"
        if cached:
            lines.append(Line(OK, name, f"{ref}@{cached[:12]} in the hub cache"))
        elif ref in tiny_hub.TINY_REPOS:
            lines.append(Line(OK, name, f"{ref} is built here by `harness fetch`"))
        elif hub.offline():
            lines.append(Line(FAIL, name, f"{ref} is not in the hub cache and HF_HUB_OFFLINE is "
                              "set; run `harness fetch --recipe NAME` on a host with hub access "
                              "(or point HF_HOME at a cache that holds it)"))
        else:
            why = _hub_access(ref, revision, repo_type)
            lines.append(Line(FAIL, name, f"{ref}: {why}") if why else
                         Line(OK, name, f"{ref} reachable; `harness fetch` downloads it"))
    return lines or [Line(SKIP, "hub", "the recipe names no hub id")]


def _installed_eval() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in metadata.distributions():
        out[normalize(dist.metadata["Name"] or "")] = dist.version
    return out


def _installed_train(python: Path, names: list[str]) -> dict[str, str]:
    code = ("import json,sys\nfrom importlib import metadata\nout={}\n"
            "for n in sys.argv[1:]:\n    try: out[n]=metadata.version(n)\n"
            "    except metadata.PackageNotFoundError: pass\nprint(json.dumps(out))")
    proc = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True,
                          timeout=60)
    return {normalize(k): v for k, v in json.loads(proc.stdout or "{}").items()}


def check_envs(ctx) -> list[Line]:
    requirements = ctx.project / "requirements"
    lines = []
    for env in ("train", "eval"):
        names = sorted({p for d in STAGES.values() if d.env == env for p in d.packages})
        pins = read_lock(lock_path(env, requirements))
        names = [n for n in names if normalize(n) in pins]
        if env == "eval":
            installed = _installed_eval()
            where = sys.prefix
        else:
            train = Path(os.environ.get("HARNESS_TRAIN_ENV", "") or
                         Path(sys.prefix).parent / "train")
            python = train / "bin" / "python"
            where = str(train)
            if not python.exists():
                lines.append(Line(FAIL, "env train", f"no train env at {train}; run `make setup` "
                                  "(or set HARNESS_TRAIN_ENV)"))
                continue
            installed = _installed_train(python, names)
        wrong = [f"{n} {installed.get(normalize(n), 'missing')} (lock {pins[normalize(n)]})"
                 for n in names if installed.get(normalize(n)) != pins[normalize(n)]]
        lock = lock_path(env, requirements).name
        lines.append(Line(FAIL, f"env {env}", f"{', '.join(wrong)} at {where}; run `make setup` "
                          f"(it rebuilds the env from {lock})") if wrong else
                     Line(OK, f"env {env}", f"{len(names)} pinned packages match {lock}"))
    return lines


def check_ray(ctx) -> Line:
    spec = ctx.recipe.executor
    if executor_kind(spec) != "ray":
        return Line(SKIP, "ray", "not used (executor.kind: local, no RAY_ADDRESS)")
    address = spec.address or os.environ.get("RAY_ADDRESS")
    if not address:
        return Line(OK, "ray", "a local Ray instance is started for the run")
    code = ("import json, ray\nray.init(address=%r, include_dashboard=False, "
            "log_to_driver=False)\nprint(json.dumps(ray.cluster_resources()))" % address)
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)
        resources_ = json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return Line(FAIL, "ray", f"cannot join the Ray cluster at {address}; start it (`ray start "
                    "--head`), check the address, and give its token (RAY_AUTH_TOKEN)")
    gpus = resources_.get("GPU", 0)
    if spec.num_gpus and gpus < spec.num_gpus:
        return Line(FAIL, "ray", f"the cluster at {address} has {gpus:g} GPU(s), a unit asks for "
                    f"{spec.num_gpus:g}; add GPU nodes (`ray start --num-gpus`)")
    return Line(OK, "ray", f"cluster at {address}: {resources_.get('CPU', 0):g} CPUs, "
                f"{gpus:g} GPUs")


def run_checks(ctx) -> list[Line]:
    needs = resources.plan_needs(ctx)
    checks = [("gpu", lambda: check_gpus(ctx, needs)), ("dtype", lambda: check_dtype(ctx)),
              ("disk", lambda: check_disk(ctx, needs)), ("shm", lambda: check_shm(ctx, needs)),
              ("ram", lambda: check_ram(needs)), ("hub", lambda: check_hub(ctx)),
              ("env", lambda: check_envs(ctx)), ("ray", lambda: check_ray(ctx))]
    lines: list[Line] = []
    for name, check in checks:
        try:
            out = check()
        except Exception as exc:  # noqa: BLE001 - a broken check is a failed line, no traceback
            out = Line(FAIL, name, f"the check itself failed: {type(exc).__name__}: "
                       f"{(str(exc).splitlines() or [''])[0][:160]}")
        lines.extend(out if isinstance(out, list) else [out])
    return lines
