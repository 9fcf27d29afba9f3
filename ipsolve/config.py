"""Task and evaluation configurations (YAML, read with `yaml.safe_load`).

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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

SOLVERS = ("ddrm", "ddnm", "pigdm", "dps")
SOLVER_OPTIONS = {"ddrm": ("eta", "eta_b"), "ddnm": ("eta",), "pigdm": ("eta",),
                  "dps": ("step_size", "clip_x0", "step_schedule")}
# `ipsolve restore`'s DPS, per task family (deno; sr: sr4, sr16, sr_bicubic4…; inp: inp, inp_mask, inp_box; "*":
# every other task): the "beta" step schedule, one ζ for every budget, chosen on validation digits
# (scripts/bench_dps_step.py, docs/solvers_benchmark.md). solvers.dps keeps the published defaults (ζ = 1 at
# every step, x̂₀ clamped).
DPS_RESTORE_DEFAULTS = {"deno": {"step_schedule": "beta", "step_size": 0.2, "clip_x0": True},
                        "sr": {"step_schedule": "beta", "step_size": 0.3, "clip_x0": True},
                        "inp": {"step_schedule": "beta", "step_size": 0.2, "clip_x0": True},
                        "*": {"step_schedule": "beta", "step_size": 0.2, "clip_x0": True}}
CONFIGS = Path(__file__).resolve().parent / "configs"  # packaged named configs: models/, tasks/, eval/


def read_yaml(path) -> dict:
    """A YAML mapping from `path` (ValueError when the file is missing or not a mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file: give the path of a YAML config")
    with open(path) as file:
        try:
            data = yaml.safe_load(file)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(error, "problem", None) or "not valid YAML"
            raise ValueError(f"{path} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a YAML mapping (key: value lines)")
    return data


def _check_keys(data: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed keys are {sorted(allowed)}")


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
    def from_dict(cls, data: dict, where: str = "task") -> "TaskConfig":
        _check_keys(data, {"name", "operator", "sigma_y_pixel", "params", "seed"}, where)
        if "operator" not in data:
            raise ValueError(f"{where}: missing `operator` (a degradations.make name such as sr4)")
        sigma = float(data.get("sigma_y_pixel", 0.0))
        if sigma < 0:
            raise ValueError(f"{where}: sigma_y_pixel must be >= 0, got {sigma}")
        return cls(name=str(data.get("name", data["operator"])), operator=str(data["operator"]),
                   sigma_y_pixel=sigma, params=dict(data.get("params") or {}), seed=int(data.get("seed", 0)))

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
    return TaskConfig.from_dict(read_yaml(path), where=str(path))


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
    source: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.source, tasks=[t.as_dict() for t in self.tasks])


def _nested_splits(data: dict, budgets: tuple, where: str) -> dict:
    """Budget → (outer, inner). `inner_steps: I` alone means one anytime run of max(budgets)/I outer steps."""
    if "splits" in data:
        splits = {int(b): tuple(int(v) for v in s) for b, s in data["splits"].items()}
    elif "inner_steps" in data:
        inner = int(data["inner_steps"])
        outer = max(budgets) // inner
        splits = {b: (outer, inner) for b in budgets}
    else:
        raise ValueError(f"{where}: give `inner_steps: I` or `splits: {{budget: [outer, inner]}}`")
    for budget in budgets:
        if budget not in splits:
            raise ValueError(f"{where}: budget {budget} has no outer×inner split")
        outer, inner = splits[budget]
        if budget % inner or not inner <= budget <= outer * inner:
            raise ValueError(f"{where}: budget {budget} is not a preview of a {outer}×{inner} nested run "
                             f"(it must be a multiple of {inner} up to {outer * inner})")
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


def _method(name: str, data: dict, budgets: tuple, where: str) -> MethodConfig:
    """A method entry `NAME: {solver:, nested:, options…}`; `solver` defaults to NAME when NAME is a solver
    (else ddrm) and `nested` to whether NAME starts with "nested" (so `ddrm:` and `nested:` keep meaning
    plain and Nested DDRM)."""
    data = dict(data or {})
    solver = str(data.pop("solver", name if name in SOLVERS else "ddrm"))
    if solver not in SOLVERS:
        raise ValueError(f"{where}.{name}: unknown solver {solver!r}; choose among {list(SOLVERS)}")
    if name not in SOLVERS and not name.startswith("nested") and "nested" not in data:
        raise ValueError(f"{where}: method {name!r} names no solver: use one of {list(SOLVERS)} or a name "
                         f"starting with nested, or give solver: and nested:")
    nested = bool(data.pop("nested", name.startswith("nested")))
    allowed = set(SOLVER_OPTIONS[solver]) | ({"eta_outer", "inner_steps", "splits"} if nested else set())
    _check_keys(data, allowed, f"{where}.{name}")
    splits = _nested_splits(data, budgets, f"{where}.{name}") if nested else {}
    options = {key: _option_value(data.get(key, solver_default(solver, key)), solver_default(solver, key),
                                  f"{where}.{name}.{key}") for key in SOLVER_OPTIONS[solver]}
    return MethodConfig(name=name, solver=solver, nested=nested, options=options,
                        eta_outer=float(data.get("eta_outer", 0.0)), splits=splits)


def _option_value(value, default, where: str):
    """`value` of an option as the type of its default: a bool (true / false), a str, else a float."""
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ValueError(f"{where}: give true or false, got {value!r}")
    return value if isinstance(default, (bool, str)) else float(value)


def load_eval_config(reference) -> EvalConfig:
    """Read and check an evaluation config: a packaged name (`embedded_smoke`) or a path; its task
    references resolve relative to the file (see the module docstring)."""
    path = config_path(reference)
    data = read_yaml(path)
    allowed = {"model", "image_shape", "seed", "batch_size", "tasks", "budgets", "methods", "metrics"}
    _check_keys(data, allowed, str(path))
    for key in ("model", "tasks", "budgets", "methods"):
        if key not in data:
            raise ValueError(f"{path}: missing `{key}`")
    budgets = tuple(sorted(int(b) for b in data["budgets"]))
    if not budgets or budgets[0] < 1:
        raise ValueError(f"{path}: budgets must be positive NFE counts, got {data['budgets']}")
    tasks = tuple(_task_in(t, path) for t in data["tasks"])
    if len({t.name for t in tasks}) != len(tasks):
        raise ValueError(f"{path}: task names must be distinct")
    methods = tuple(_method(n, m, budgets, f"{path}: methods") for n, m in data["methods"].items())
    metrics = dict(data.get("metrics") or {})
    _check_keys(metrics, {"lpips", "fid"}, f"{path}: metrics")
    fid = metrics.get("fid", "clean")
    if fid not in (None, "clean", "legacy_pytorch"):
        raise ValueError(f"{path}: metrics.fid must be clean, legacy_pytorch or null, got {fid!r}")
    lpips = metrics.get("lpips", "alex")
    if lpips not in (None, "alex", "vgg"):
        raise ValueError(f"{path}: metrics.lpips must be alex, vgg or null, got {lpips!r}")
    shape = data.get("image_shape")
    return EvalConfig(model=str(data["model"]), tasks=tasks, budgets=budgets, methods=methods,
                      seed=int(data.get("seed", 0)), batch_size=int(data.get("batch_size", 4)),
                      lpips=lpips, fid_mode=fid,
                      image_shape=tuple(int(s) for s in shape) if shape else None, source=data)


def _task_in(reference, config_file: Path) -> TaskConfig:
    """A task reference of the eval config `config_file`: a path relative to the file's folder; a bare
    name in `../tasks/` beside that folder, else packaged."""
    if isinstance(reference, dict) or Path(str(reference)).suffix in (".yml", ".yaml"):
        return load_task(reference, config_file.parent)
    return load_task(reference, config_file.parent.parent / "tasks")
