"""Recipe schema: the one interface of an experiment.

A recipe is strict on purpose. mergekit silently ignores unknown YAML keys, so a misspelled
`densty:` would quietly merge with the default; here every unknown key is an error that names
its path in the file and suggests the closest valid key.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import HarnessError
from harness.hub import HUB_ID
from harness.merge_methods import METHODS, SEARCH_OPTIONS, option_names

RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

TaskType = Literal["mcqa", "qa"]
Language = Literal["en", "zh"]
# Sources a dataset entry may name; converters arrive with the data stage.
DATASET_SOURCES = (
    "synthetic", "medqa", "medmcqa", "cmexam", "cmb", "cmb_clin",
    "healthcaremagic", "chatdoctor", "cmedqa2", "medical_zh_sft",
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyBase(Strict):
    """A Qwen2- or Llama-architecture model built and pre-trained locally (no hub)."""
    architecture: Literal["qwen2", "llama"] = "qwen2"
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(2, gt=0)
    num_kv_heads: int = Field(1, gt=0)
    intermediate_size: int = Field(256, gt=0)
    vocab_size: int = Field(3000, gt=256)
    # Embedding and lm_head rows rounded up to a multiple of this, past the tokenizer's length,
    # as real checkpoints pad them (Qwen2-7B: 152064 rows for 151646 tokens); 1: no padding.
    vocab_multiple_of: int = Field(1, gt=0)
    max_position_embeddings: int = Field(512, gt=0)
    pretrain_steps: int = Field(1200, gt=0)
    pretrain_lr: float = Field(2e-3, gt=0)
    pretrain_batch_size: int = Field(32, gt=0)
    cutoff_len: int = Field(128, gt=0)
    # The pre-training corpus: generated statements about the synthetic conditions.
    corpus_statements: int = Field(40000, gt=0)
    corpus_seed: int = 0
    # Share of the synthetic conditions whose true facts the corpus states (0: none, the base
    # answers at chance; 1: all, in statement form, so a specialist learns the exam, not facts).
    corpus_known: float = Field(0.0, ge=0, le=1)
    # An instruction stage after pre-training (full SFT with LLaMA-Factory, through the chat
    # template): questions about a share `instruct_share` of the conditions, answered in the
    # base's own style, so the base answers from what it knows, as an instruct model does.
    # 0 steps: no such stage.
    instruct_steps: int = Field(0, ge=0)
    instruct_lr: float = Field(1e-3, gt=0)
    instruct_items: int = Field(2000, gt=0)
    instruct_share: float = Field(0.3, gt=0, le=1)

    @model_validator(mode="after")
    def _head_dim(self) -> "TinyBase":
        # vLLM's CPU attention kernel rejects head_dim 16; 64 is known to work.
        if self.hidden_size % self.num_heads or self.hidden_size // self.num_heads != 64:
            raise ValueError(
                f"hidden_size/num_heads must be 64 (vLLM CPU kernels), got "
                f"{self.hidden_size}/{self.num_heads}; fix hidden_size or num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        return self


# One system prompt for training, dev scoring and evaluation: LLaMA-Factory's templates and the
# models' own chat templates have different defaults (LLaMA-Factory's `qwen`: "You are Qwen,
# created by Alibaba Cloud. ..."; Qwen2-7B-Instruct's: "You are a helpful assistant."), so the
# harness always sends this one explicitly and every model sees the same text.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


class BaseModelSpec(Strict):
    """`model` is a hub id (org/name, resolved through the hub cache; `revision` pins a branch,
    tag or commit), an absolute or ./relative local folder, or `tiny`."""
    model: str
    revision: Optional[str] = None
    template: str = "qwen"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    tiny: Optional[TinyBase] = None

    @model_validator(mode="after")
    def _tiny_spec(self) -> "BaseModelSpec":
        if self.model == "tiny" and self.tiny is None:
            object.__setattr__(self, "tiny", TinyBase())
        if self.model != "tiny" and self.tiny is not None:
            raise ValueError("`tiny` settings are only allowed with model: tiny")
        if self.kind == "hub" and not HUB_ID.match(self.model):
            raise ValueError(f"model {self.model!r} is neither `tiny`, a folder (/abs, ./rel, "
                             "../rel, ~/...) nor a hub id (org/name)")
        if self.revision and self.kind != "hub":
            raise ValueError("`revision` pins a hub model; remove it for a local folder")
        return self

    @property
    def kind(self) -> Literal["tiny", "local", "hub"]:
        if self.model == "tiny":
            return "tiny"
        if self.model.startswith(("/", "./", "../", "~")):
            return "local"
        return "hub"


class DatasetSpec(Strict):
    """One dataset. `path` is a hub dataset id (read through the hub cache, optionally pinned by
    `revision`; `config` picks a subset of a release that holds several, e.g. CMB's `exam`) or
    a local file/folder in the original release format (a relative path is relative to the
    project folder). Official splits are kept; missing ones are carved with `split_seed` by
    the fractions below."""
    source: Literal[DATASET_SOURCES]  # type: ignore[valid-type]
    language: Language
    task_type: TaskType
    path: Optional[str] = None
    revision: Optional[str] = None
    config: Optional[str] = None
    split_seed: int = 0
    dev_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    max_train: Optional[int] = Field(None, gt=0)
    # Sizes of the generated splits (synthetic source only).
    train_size: int = Field(4000, gt=0)
    dev_size: int = Field(200, gt=0)
    test_size: int = Field(400, gt=0)

    @model_validator(mode="after")
    def _path_needed(self) -> "DatasetSpec":
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"source {self.source!r} needs `path` (hub id or local file)")
        if self.source == "synthetic" and self.path:
            raise ValueError("source 'synthetic' is generated here; remove `path`")
        if self.source != "synthetic":
            from harness.data.converters import SOURCES
            known = SOURCES[self.source]
            if (known.language, known.task_type) != (self.language, self.task_type):
                raise ValueError(f"source {self.source!r} is {known.language} {known.task_type}; "
                                 f"set language: {known.language} and task_type: {known.task_type}")
            if self.config is not None and self.config not in known.hub_subsets:
                valid = ", ".join(sorted(known.hub_subsets)) or "none (remove `config`)"
                raise ValueError(f"config {self.config!r} is not a subset of {self.source}; "
                                 f"valid: {valid}")
        return self


class Finetuning(Strict):
    """LoRA SFT as in the paper (rank 8, alpha 16, dropout 0.01, lr 1e-4)."""
    type: Literal["lora", "full"] = "lora"
    lora_rank: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    lora_dropout: float = Field(0.01, ge=0, lt=1)
    learning_rate: float = Field(1e-4, gt=0)
    num_train_epochs: float = Field(3.0, gt=0)
    max_steps: Optional[int] = Field(None, gt=0)
    per_device_train_batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    cutoff_len: int = Field(1024, gt=0)


def model_kind(ref: str) -> Literal["local", "hub"]:
    """A folder (/abs, ./rel, ../rel, ~/...) or a hub id."""
    return "local" if ref.startswith(("/", "./", "../", "~")) else "hub"


class Specialist(Strict):
    """A fine-tune of the base: trained here from `dataset` (LLaMA-Factory), or, with `model`, a
    fine-tune that already exists (a hub id, optionally pinned by `revision`, or a local
    folder), never trained. Either way `dataset` is its own task: its dev split is what the
    merge must keep of it (Hi-Merging's contributions, the baselines' grid choice)."""
    name: str
    dataset: str
    language: Language
    task_type: TaskType
    model: Optional[str] = None
    revision: Optional[str] = None
    # An existing fine-tune whose vocabulary differs from the base's (added tokens, other ids):
    # `base` maps its rows onto the base tokenizer's ids by token string, as mergekit's
    # `tokenizer_source: base` (harness/merge/vocab.py); unset, a differing vocabulary is refused.
    tokenizer_source: Optional[Literal["base"]] = None
    finetuning: Finetuning = Finetuning()
    # Passed verbatim into the LLaMA-Factory YAML (that tool validates its own keys).
    llamafactory: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not RECIPE_NAME.match(v):
            raise ValueError(f"specialist name {v!r} must be letters, digits, '_', '-', '.'")
        return v

    @model_validator(mode="after")
    def _existing(self) -> "Specialist":
        if self.model is None:
            for key in ("revision", "tokenizer_source"):
                if getattr(self, key) is not None:
                    raise ValueError(f"`{key}` is for an existing model (a specialist trained "
                                     "here has the base's tokenizer); set `model:` or remove it")
            return self
        trained = sorted({"finetuning", "llamafactory"} & self.model_fields_set)
        if trained:
            raise ValueError(f"`{trained[0]}` trains a specialist, but this one is the existing "
                             f"model {self.model!r}, never trained; remove `{trained[0]}`")
        if model_kind(self.model) == "hub" and not HUB_ID.match(self.model):
            raise ValueError(f"model {self.model!r} is neither a folder (/abs, ./rel, ../rel, "
                             "~/...) nor a hub id (org/name)")
        if self.revision and model_kind(self.model) != "hub":
            raise ValueError("`revision` pins a hub model; remove it for a local folder")
        return self

    @property
    def existing(self) -> bool:
        """Named by `model`: resolved like the base, never trained."""
        return self.model is not None


class MultiTask(Strict):
    """The paper's upper reference: one fine-tune on all specialists' data mixed."""
    enabled: bool = False
    finetuning: Finetuning = Finetuning()
    llamafactory: dict[str, Any] = Field(default_factory=dict)


GridValue = Union[float, int, bool, str]


class MergeSpec(Strict):
    """One merge method: a baseline with a hyperparameter grid (each list is one grid axis), or a
    search method (Hi-Merging) with typed `options`. `name` is the leaderboard row (default: the
    method), so several variants of one method are entries of their own."""
    method: str
    name: Optional[str] = None
    grid: dict[str, list[GridValue]] = Field(default_factory=dict)
    params: dict[str, GridValue] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)  # search methods only

    @property
    def label(self) -> str:
        return self.name or self.method

    @property
    def is_search(self) -> bool:
        return self.method in SEARCH_OPTIONS

    @field_validator("name")
    @classmethod
    def _row_name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not RECIPE_NAME.match(v):
            raise ValueError(f"merge name {v!r} must be letters, digits, '_', '-', '.'")
        return v

    @model_validator(mode="after")
    def _known(self) -> "MergeSpec":
        if self.method not in METHODS:
            raise ValueError(_unknown("method", self.method, METHODS))
        allowed = METHODS[self.method].parameters
        for where, keys in (("grid", self.grid), ("params", self.params)):
            for key in keys:
                if key not in allowed:
                    raise ValueError(f"{where}: " + _unknown(f"{self.method} parameter", key, allowed))
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key} is empty; give at least one value")
            _no_duplicates(f"grid.{key}", values)
            for value in values:
                _in_range(f"grid.{key}", self.method, key, allowed[key], value)
        for key, value in self.params.items():
            _in_range(f"params.{key}", self.method, key, allowed[key], value)
        if not self.is_search:
            if self.options:
                raise ValueError(f"`options` is only for the search methods "
                                 f"({', '.join(SEARCH_OPTIONS)}); use grid/params")
            return self
        for key in self.options:
            if key not in option_names(self.method):
                raise ValueError("options: " + _unknown(f"{self.method} option", key,
                                                        option_names(self.method)))
        try:
            SEARCH_OPTIONS[self.method].model_validate(self.options)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"options.{where}: {err['msg'].removeprefix('Value error, ')}") from None
        return self


def _no_duplicates(where: str, values: list) -> None:
    seen = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{where}: {value!r} is listed twice; list each value once")
        seen.add(value)


def _in_range(where: str, method: str, name: str, param, value) -> None:
    """A value within its parameter's declared range (harness/merge_methods.py)."""
    if isinstance(param.default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {method} {name} is true or false, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {method} {name} is a number, got {value!r}")
    if (param.low is not None and value < param.low) or (param.high is not None and value > param.high):
        low = "-inf" if param.low is None else f"{param.low:g}"
        high = "inf" if param.high is None else f"{param.high:g}"
        raise ValueError(f"{where}: {method} {name} must be within [{low}, {high}], got {value!r}")


class EvalSpec(Strict):
    """lm-eval on the TEST split of every model the recipe produces, zero-shot (the paper's
    setting; the tasks define no few-shot split)."""
    tasks: list[str] = Field(min_length=1)
    backend: Literal["auto", "vllm", "hf"] = "auto"
    split: Literal["test"] = "test"
    limit: Optional[int] = Field(None, gt=0)
    # The specialists are trained through the chat template, so they are scored through it.
    apply_chat_template: bool = True
    max_gen_toks: Optional[int] = Field(None, gt=0)
    batch_size: int = Field(8, gt=0)
    tensor_parallel_size: int = Field(1, gt=0)
    max_model_len: int = Field(2048, gt=0)
    seed: int = 1234


class ScorerSpec(Strict):
    """Scores Hi-Merging's candidates and picks baseline grid points. Dev split only."""
    backend: Literal["auto", "vllm", "hf"] = "auto"
    # QA's dev score: the reference answer's mean token log-likelihood (one forward pass), or
    # `generate`: the ROUGE-L of the greedy answer (eval.max_gen_toks tokens at most), the
    # leaderboard's own metric, which sees a merge whose answers collapse while the reference
    # stays likely. MCQA is scored by option log-likelihood in both modes.
    mode: Literal["loglikelihood", "generate"] = "loglikelihood"
    split: str = "dev"
    limit: Optional[int] = Field(None, gt=0)
    batch_size: int = Field(32, gt=0)

    @field_validator("split")
    @classmethod
    def _never_test(cls, v: str) -> str:
        if v != "dev":
            raise ValueError(f"scorer.split must be 'dev' (searches never tune on {v!r}); "
                             "the test split is for the leaderboard only")
        return v


class ExecutorSpec(Strict):
    """Where units run (harness/executor.py): `local` (workers: 1 = this process, N = a pool of
    N processes) or `ray` (also chosen when RAY_ADDRESS is set)."""
    kind: Literal["local", "ray"] = "local"
    workers: int = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0)     # per unit, on Ray
    cpus_per_unit: Optional[int] = Field(None, gt=0)  # Ray CPUs and torch threads per unit
    retries: int = Field(1, ge=0)        # a unit that raises is run this many more times
    address: Optional[str] = None        # Ray cluster; default RAY_ADDRESS, else a local instance
    # Multi-GPU training through LLaMA-Factory's torchrun launch (NPROC_PER_NODE / NNODES;
    # MASTER_ADDR / MASTER_PORT come from the environment). DeepSpeed: a `deepspeed:` config
    # path in a specialist's `llamafactory` overrides.
    nproc_per_node: int = Field(1, gt=0)
    nnodes: int = Field(1, gt=0)


class ReferenceRow(Strict):
    """A number someone else reported (e.g. the paper's table), shown marked as reported and
    kept out of ranks and every derived column."""
    name: str
    source: str = Field(min_length=1)  # where it was reported: paper, table
    scores: dict[str, float] = Field(min_length=1)  # task -> value, in the table's units


class LeaderboardSpec(Strict):
    reference: list[ReferenceRow] = Field(default_factory=list)


class Recipe(Strict):
    name: str
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    base: BaseModelSpec
    datasets: dict[str, DatasetSpec] = Field(min_length=1)
    specialists: list[Specialist] = Field(min_length=2)
    multitask: MultiTask = MultiTask()
    merges: list[MergeSpec] = Field(min_length=1)
    eval: EvalSpec
    scorer: ScorerSpec = ScorerSpec()
    executor: ExecutorSpec = ExecutorSpec()
    leaderboard: LeaderboardSpec = LeaderboardSpec()
    # The run store's folder (runs/<run_store>/): recipes that name the same one share every
    # unit they have in common (content keys), e.g. the tiny paradigms' base and specialists.
    # Default: the recipe's name.
    run_store: Optional[str] = None

    @field_validator("run_store")
    @classmethod
    def _store(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not RECIPE_NAME.match(v):
            raise ValueError(f"run_store {v!r} must be letters, digits, '_', '-', '.'")
        return v

    @property
    def store_name(self) -> str:
        return self.run_store or self.name

    @model_validator(mode="after")
    def _references(self) -> "Recipe":
        names = [s.name for s in self.specialists]
        if len(set(names)) != len(names):
            raise ValueError(f"specialist names must be unique, got {names}")
        for s in self.specialists:
            if s.dataset not in self.datasets:
                raise ValueError(f"specialist {s.name!r}: " + _unknown("dataset", s.dataset, self.datasets))
            ds = self.datasets[s.dataset]
            if (s.language, s.task_type) != (ds.language, ds.task_type):
                raise ValueError(
                    f"specialist {s.name!r} says {s.language} {s.task_type}, but its dataset "
                    f"{s.dataset!r} is {ds.language} {ds.task_type}; set language: {ds.language} "
                    f"and task_type: {ds.task_type} (or pick another dataset)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be unique, got {self.seeds}")
        labels = [m.label for m in self.merges]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"merges: {', '.join(twice)} is listed twice; give each entry of "
                             "the same method its own `name:` (the leaderboard row)")
        return self


def _unknown(what: str, got: str, known) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(got, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(known)}"
    return f"unknown {what} {got!r}; {hint}"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """Walk the schema along an error location to the model that owns its last key."""
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found:
            return found
    return None


def _format_error(source: str, err: dict) -> str:
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc) or "<top>"
    if err["type"] == "extra_forbidden":
        owner = _model_at(loc)
        known = list(owner.model_fields) if owner else []
        return f"{source}: {path}: " + _unknown("key", str(loc[-1]), known)
    msg = err["msg"].removeprefix("Value error, ")
    return f"{source}: {path}: {msg}"


def parse_recipe(data: Any, source: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise HarnessError(f"{source}: a recipe must be a YAML mapping at the top level")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # a misspelled required key is one mistake: "unknown key 'taks'; did you mean
        # 'tasks'?" says it all, without "tasks: Field required" beside it
        meant = set()
        for e in errors:
            if e["type"] == "extra_forbidden":
                owner = _model_at(tuple(e["loc"]))
                close = difflib.get_close_matches(str(e["loc"][-1]), list(owner.model_fields)
                                                  if owner else [], n=1)
                meant.update(tuple(e["loc"][:-1]) + (c,) for c in close)
        lines = [_format_error(source, e) for e in errors
                 if not (e["type"] == "missing" and tuple(e["loc"]) in meant)]
        raise HarnessError("\n".join(lines)) from None


def load_recipe_file(path: Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read recipe ({exc.strerror}); check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise HarnessError(f"{path}: not valid YAML{where} ({problem}); fix the syntax") from None
    recipe = parse_recipe(data, str(path))
    if recipe.name != path.stem:
        raise HarnessError(f"{path}: name: {recipe.name!r} must equal the file name {path.stem!r}; "
                           "rename one of them")
    return recipe


def check_recipe_name(name: str) -> str:
    """Recipe names are file stems under recipes/: no separators, no `..`, no hidden files."""
    if "/" in name or "\\" in name or ".." in name or not RECIPE_NAME.match(name):
        raise HarnessError(f"recipe name {name!r} is not allowed: use a plain name such as "
                           "tiny_en_zh (no path separators or '..')")
    return name


def load_recipe(name: str, recipes_dir: Path) -> Recipe:
    check_recipe_name(name)
    path = Path(recipes_dir) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(recipes_dir).glob("*.yaml"))
        raise HarnessError(f"{path}: no such recipe; " + _unknown("recipe", name, known))
    return load_recipe_file(path)
