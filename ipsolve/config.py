"""Task and evaluation configurations (YAML, read by `read_yaml`: a SafeLoader that refuses a key given twice).

Named configs ship inside the package, in `ipsolve/configs/{models,tasks,eval}/` (the checkout's
top-level `configs/` is a link to that folder), so an installed wheel knows them too.

A task file (`tasks/NAME.yml`) names a degradation and its measurement noise:

    name: sr16                 # label used in outputs
    operator: sr16             # `degradations.make` name
    params: {}                 # extra `make` keyword arguments (optional)
    seed: 0                    # operator seed (the inpainting mask), optional
    sigma_y_pixel: 0.0         # noise std in [0, 1] pixel units; model units are twice that

An evaluation file (`eval/NAME.yml`) lists the model, tasks, NFE budgets, methods and metrics; see
`eval/celeba_table2.yml` for every key with its meaning. `load_eval_config` takes a packaged name
(`embedded_smoke`) or any path. References inside a config resolve relative to the config file: a task
path `my_tasks/x.yml` next to it, a bare task name in `../tasks/NAME.yml` beside the config's folder when
that file exists, else among the packaged tasks.

Every key is checked against a schema (`TASK_FIELDS`, `EVAL_FIELDS` and each method's fields, built from
`SOLVER_OPTIONS`; the rules are `ipsolve.schema`'s) before any value is used: a refusal is one ValueError
line naming the file, the key path (`methods.ddrm.eta`), the value and what is allowed.
"""
from __future__ import annotations

from collections.abc import Hashable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ipsolve import schema

SOLVERS = ("ddrm", "ddnm", "pigdm", "dps")
SOLVER_OPTIONS = {"ddrm": ("eta", "eta_b"), "ddnm": ("eta",), "pigdm": ("eta", "weight"),
                  "dps": ("step_size", "clip_x0", "step_schedule")}
CHOICE_OPTIONS = {"weight": ("code", "paper", "score"),  # options that name a choice (solvers.PIGDM_WEIGHTS,
                  "step_schedule": ("constant", "beta")}  # solvers.dps's step schedules)
# `ipsolve restore`'s DPS, per task family (deno; sr: sr4, sr16, sr_bicubic4…; inp: inp, inp_mask, inp_box; "*":
# every other task): the "beta" step schedule, one ζ for every budget, chosen on validation digits
# (scripts/bench_dps_step.py, docs/solvers_benchmark.md). solvers.dps keeps the published defaults (ζ = 1 at
# every step, x̂₀ clamped).
DPS_RESTORE_DEFAULTS = {"deno": {"step_schedule": "beta", "step_size": 0.2, "clip_x0": True},
                        "sr": {"step_schedule": "beta", "step_size": 0.3, "clip_x0": True},
                        "inp": {"step_schedule": "beta", "step_size": 0.2, "clip_x0": True},
                        "*": {"step_schedule": "beta", "step_size": 0.2, "clip_x0": True}}
CONFIGS = Path(__file__).resolve().parent / "configs"  # packaged named configs: models/, tasks/, eval/


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (plain YAML keeps the last one, so a
    second `ddrm:` under `methods:` would silently replace the first)."""

    def construct_mapping(self, node, deep=False):
        lines = {}  # key → the line it was first given on
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` is no key of its own
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader refuses it with its own message
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (first on line {lines[key] + 1})",
                    key_node.start_mark)
            lines[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path) -> dict:
    """A YAML mapping from `path` (ValueError when the file is missing, is not a mapping or repeats a key)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file: give the path of a YAML config")
    with open(path) as file:
        try:
            data = yaml.load(file, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(error, "problem", None) or "not valid YAML"
            raise ValueError(f"{path} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a YAML mapping (key: value lines)")
    return data


class ConfigError(ValueError):
    """A refusal that already names its file."""


@contextmanager
def in_file(path):
    """Name `path` in the ValueErrors raised inside the block (once: a ConfigError already names its own)."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


TASK_FIELDS = schema.Fields(
    required={"operator": schema.Text()},
    optional={"name": schema.Name(), "sigma_y_pixel": schema.Number(0, 1),
              "params": schema.NullOr(schema.MapOf(schema.Text(), schema.Anything(), least=0)),
              "seed": schema.Integer(0, schema.MAX_SEED)})


@dataclass(frozen=True)
class TaskConfig:
    """One degradation with its noise level; `sigma_y_pixel` is in [0, 1] pixel units."""
    name: str
    operator: str
    sigma_y_pixel: float = 0.0
    params: dict = field(default_factory=dict)
    seed: int = 0

    @property
    def sigma_y_model(self) -> float:
        """The noise std in model units ([-1, 1] images): twice the pixel value."""
        return 2.0 * self.sigma_y_pixel

    @classmethod
    def from_dict(cls, data, where: str = "") -> "TaskConfig":
        """A task from its mapping, checked against TASK_FIELDS (`where`: its key path, "" for a file)."""
        data = TASK_FIELDS(data, where)
        name = data.get("name", data["operator"])
        schema.plain_name(name, schema.key_path(where, "name" if "name" in data else "operator"))
        return cls(name=name, operator=data["operator"], sigma_y_pixel=data.get("sigma_y_pixel", 0.0),
                   params=dict(data.get("params") or {}), seed=data.get("seed", 0))

    def as_dict(self) -> dict:
        return {"name": self.name, "operator": self.operator, "params": self.params, "seed": self.seed,
                "sigma_y_pixel": self.sigma_y_pixel, "sigma_y_model": self.sigma_y_model}


def load_task(reference, base_dir=None) -> TaskConfig:
    """A task from a mapping, a .yml path (relative to `base_dir` when given), or a bare name: the file
    `base_dir/NAME.yml` when it exists, else the packaged task NAME."""
    if isinstance(reference, dict):
        return TaskConfig.from_dict(reference)
    reference = str(reference)
    if Path(reference).suffix in (".yml", ".yaml"):
        path = Path(reference)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
    else:
        local = None if base_dir is None else Path(base_dir) / f"{reference}.yml"
        path = local if local is not None and local.is_file() else named_config("tasks", reference)
    with in_file(path):
        return TaskConfig.from_dict(read_yaml(path))


def named_config(kind: str, name: str) -> Path:
    """The packaged config `CONFIGS/kind/name.yml`, or ValueError listing the names there."""
    path = CONFIGS / kind / f"{name}.yml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (CONFIGS / kind).glob("*.yml")))
        raise ValueError(f"no {kind[:-1] if kind.endswith('s') else kind} config named {name!r}: "
                         f"give a .yml path or one of {known}")
    return path


def config_path(reference) -> Path:
    """An eval config reference → its file: an existing path as it is, a bare name → the packaged one."""
    path = Path(reference)
    if path.is_file() or path.suffix in (".yml", ".yaml") or len(path.parts) > 1:
        return path
    return named_config("eval", str(reference))


@dataclass(frozen=True)
class MethodConfig:
    """A (solver, plain | nested) pair to evaluate, with the solver's options (None: its default).

    Plain: one run of `solver` per budget. Nested: `splits` maps each budget to (outer_steps,
    inner_steps); runs with the same split are shared, and a budget smaller than its run's total is read
    from the anytime preview after that many NFEs.
    """
    name: str
    solver: str = "ddrm"
    nested: bool = False
    options: dict = field(default_factory=dict)
    eta_outer: float = 0.0
    splits: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "solver": self.solver, "nested": self.nested, "options": self.options,
                "eta_outer": self.eta_outer, "splits": {str(b): list(s) for b, s in self.splits.items()}}


@dataclass(frozen=True)
class EvalConfig:
    model: str
    tasks: tuple
    budgets: tuple
    methods: tuple
    seed: int = 0
    batch_size: int = 4
    lpips: str | None = "alex"
    fid_mode: str | None = "clean"
    image_shape: tuple | None = None
    samples: int = 1  # K posterior draws per image and method: sample 0 is evaluated, and with K > 1 their mean
    source: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.source, tasks=[t.as_dict() for t in self.tasks])


def _nested_splits(data: dict, budgets: tuple, where: str) -> dict:
    """Budget → (outer, inner). `inner_steps: I` alone means one anytime run of max(budgets)/I outer steps;
    each budget is the preview after a whole number of inner runs, within the run (`check_schedule`)."""
    from ipsolve.restore import check_schedule

    if ("splits" in data) == ("inner_steps" in data):
        raise ValueError(f"{where} must give either `inner_steps: I` or `splits: {{budget: [outer, inner]}}`"
                         f"{', not both' if 'splits' in data else ''}")
    if "splits" in data:
        splits = {b: tuple(s) for b, s in data["splits"].items()}
        for budget in splits:
            if budget not in budgets:
                raise ValueError(f"{where}.splits.{budget} is a split for no budget: the budgets are "
                                 f"{', '.join(map(str, budgets))}")
        for budget in budgets:
            if budget not in splits:
                raise ValueError(f"{where}.splits has no [outer, inner] split for budget {budget}")
        split_of = lambda budget: f"{where}.splits.{budget}"  # noqa: E731
    else:
        inner = data["inner_steps"]
        splits = {b: (max(budgets) // inner, inner) for b in budgets}
        split_of = lambda budget: f"{where}.inner_steps"  # noqa: E731
    for budget, (outer, inner) in splits.items():
        named = f"budgets[{budgets.index(budget)}]"  # the other key of the refusal
        if budget % inner:
            raise ValueError(f"{split_of(budget)}: {named}, {budget} NFE, is no whole number of inner runs of "
                             f"{inner} NFE (every budget must be a multiple of the inner steps, {inner})")
        try:
            check_schedule(outer, inner, budget)
        except ValueError as error:
            raise ValueError(f"{split_of(budget)} and {named}: {error}") from None
    return {b: splits[b] for b in budgets}


def restore_defaults(solver: str, task: str, given: dict | None = None) -> dict:
    """The options `ipsolve restore` gives `solver` on the task (an operator name, by its family: see
    DPS_RESTORE_DEFAULTS), the `given` ones (not None) overriding them. A given step_schedule other than
    the tuned one drops the tuned ζ (it is in that schedule's units): solvers.dps's own default ζ applies."""
    given = {key: value for key, value in (given or {}).items() if value is not None}
    family = task.split("_")[0].rstrip("0123456789")  # sr16 → sr, inp_mask → inp, deblur_gauss+inp → deblur
    defaults = dict(DPS_RESTORE_DEFAULTS.get(family, DPS_RESTORE_DEFAULTS["*"])) if solver == "dps" else {}
    if given.get("step_schedule", defaults.get("step_schedule")) != defaults.get("step_schedule"):
        defaults.pop("step_size")
    return {**defaults, **given}


def solver_default(solver: str, option: str):
    """The default value of `option` in the signature of solvers.`solver` (one source of truth)."""
    import inspect

    import solvers

    return inspect.signature(getattr(solvers, solver)).parameters[option].default


# The range of each solver option (the solvers' own checks, made before anything runs); an option missing
# here is checked against the type of its default in the solver's signature (`option_rule`).
OPTION_RULES = {("ddrm", "eta"): schema.Number(0, 1), ("ddrm", "eta_b"): schema.Number(0, 1),
                ("ddnm", "eta"): schema.Number(0, 1), ("pigdm", "eta"): schema.Number(0),
                ("pigdm", "weight"): schema.Choice(*CHOICE_OPTIONS["weight"]),
                ("dps", "step_size"): schema.Number(0),
                ("dps", "step_schedule"): schema.Choice(*CHOICE_OPTIONS["step_schedule"])}


def option_rule(solver: str, option: str):
    """The rule of a solver option: OPTION_RULES', else one for the type of the solver's default."""
    if (solver, option) in OPTION_RULES:
        return OPTION_RULES[solver, option]
    default = solver_default(solver, option)
    if isinstance(default, bool):
        return schema.Flag()
    if isinstance(default, int):
        return schema.Integer()
    if isinstance(default, float):
        return schema.Number()
    return schema.Text()


NESTED_FIELDS = {"eta_outer": schema.Number(0), "inner_steps": schema.Integer(1),
                 "splits": schema.MapOf(schema.Integer(1), schema.ListOf(schema.Integer(1), count=2))}


def _method(name: str, data, budgets: tuple, where: str) -> MethodConfig:
    """A method entry `NAME: {solver:, nested:, options…}`; `solver` defaults to NAME when NAME is a solver
    (else ddrm) and `nested` to whether NAME starts with "nested" (so `ddrm:` and `nested:` keep meaning
    plain and Nested DDRM). `where`: its key path (methods.NAME)."""
    data = data or {}
    solver = schema.Choice(*SOLVERS)(data.get("solver", name if name in SOLVERS else "ddrm"),
                                     schema.key_path(where, "solver"))
    if name not in SOLVERS and not name.startswith("nested") and "nested" not in data:
        raise ValueError(f"{where} names no solver: call the method one of {', '.join(SOLVERS)} or a name "
                         f"starting with nested, or give solver: and nested:")
    nested = schema.Flag()(data.get("nested", name.startswith("nested")), schema.key_path(where, "nested"))
    fields = {"solver": schema.Choice(*SOLVERS), "nested": schema.Flag(),
              **{option: option_rule(solver, option) for option in SOLVER_OPTIONS[solver]},
              **(NESTED_FIELDS if nested else {})}
    data = schema.Fields(optional=fields)(data, where)
    splits = _nested_splits(data, budgets, where) if nested else {}
    options = {key: data.get(key, solver_default(solver, key)) for key in SOLVER_OPTIONS[solver]}
    return MethodConfig(name=name, solver=solver, nested=nested, options=options,
                        eta_outer=data.get("eta_outer", 0.0), splits=splits)


class TaskReference:
    """A task as the eval config gives it: a mapping (checked here), a .yml path, or a plain task name."""
    what = "a task name, a .yml path or a task mapping"

    def __call__(self, value, where: str):
        if isinstance(value, dict):
            return TaskConfig.from_dict(value, where)
        if isinstance(value, str) and Path(value).suffix in (".yml", ".yaml"):
            return value
        return schema.plain_name(value, where)


ANY_MAPPING = schema.MapOf(schema.Anything(), schema.Anything(), least=0)  # each method checks its own keys
EVAL_FIELDS = schema.Fields(
    required={"model": schema.Text(), "tasks": schema.ListOf(TaskReference()),
              "budgets": schema.ListOf(schema.Integer(1)),
              "methods": schema.MapOf(schema.Name(), schema.NullOr(ANY_MAPPING))},
    optional={"image_shape": schema.NullOr(schema.ListOf(schema.Integer(1), count=3)),
              "seed": schema.Integer(0, schema.MAX_SEED), "batch_size": schema.Integer(1),
              "samples": schema.Integer(1),
              "metrics": schema.NullOr(schema.Fields(optional={"lpips": schema.Choice("alex", "vgg", None),
                                                               "fid": schema.Choice("clean", "legacy_pytorch",
                                                                                    None)}))})


def load_eval_config(reference) -> EvalConfig:
    """Read and check an evaluation config: a packaged name (`embedded_smoke`) or a path; its task
    references resolve relative to the file (see the module docstring). Every key is checked against
    EVAL_FIELDS (shape, then range) before any value is used; ValueError names the file and key path."""
    path = config_path(reference)
    source = read_yaml(path)
    with in_file(path):
        data = EVAL_FIELDS(source, "")
        budgets = tuple(sorted(data["budgets"]))
        for i, budget in enumerate(data["budgets"]):
            if data["budgets"].index(budget) != i:
                raise ValueError(f"budgets[{i}] repeats {budget}: give each budget once")
        tasks = tuple(_task_in(t, path, f"tasks[{i}]") for i, t in enumerate(data["tasks"]))
        for i, task in enumerate(tasks):
            if [t.name for t in tasks].index(task.name) != i:
                raise ValueError(f"tasks[{i}] is named {task.name!r} like an earlier task: task names must be "
                                 f"distinct (they name the output folders)")
        methods = tuple(_method(n, m, budgets, f"methods.{n}") for n, m in data["methods"].items())
        metrics = data.get("metrics") or {}
        shape = data.get("image_shape")
        return EvalConfig(model=data["model"], tasks=tasks, budgets=budgets, methods=methods,
                          seed=data.get("seed", 0), batch_size=data.get("batch_size", 4),
                          lpips=metrics.get("lpips", "alex"), fid_mode=metrics.get("fid", "clean"),
                          image_shape=tuple(shape) if shape else None, samples=data.get("samples", 1),
                          source=source)


def _task_in(reference, config_file: Path, where: str) -> TaskConfig:
    """A checked task reference of the eval config `config_file` (at key path `where`): a task already made
    from its mapping; a path relative to the file's folder; a bare name in `../tasks/` beside that folder,
    else packaged."""
    if isinstance(reference, TaskConfig):
        return reference
    folder = config_file.parent if Path(reference).suffix in (".yml", ".yaml") else config_file.parent.parent / "tasks"
    try:
        return load_task(reference, folder)
    except ConfigError:  # a task file's own key, named with its file
        raise
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
