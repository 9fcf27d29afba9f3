"""Mutation review of the suite with mutmut 3 (a development tool: not part of CI or the requirements).

    pip install mutmut==3.8.1                       # into the project's environment
    python scripts/mutation_review.py solvers       # one phase; or: all, or several names
    python scripts/mutation_review.py --retry-survivors solvers   # after adding tests
    python scripts/mutation_review.py --summary --diff solvers metrics units degradations

Each phase copies the sources and tests into WORK/PHASE (default /tmp/ipsolve-mutation), writes a setup.cfg
[mutmut] section that mutates the phase's files and runs only the test files that exercise them, and runs
`mutmut run --max-children 1` there (results are cached: rerunning continues where it stopped; delete the
folder to start over). --summary prints killed / survived / no-tests counts and lists the survivors
(with `mutmut show` diffs when --diff is given). See docs/testing.md for the last results.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("ipsolve", "solvers", "degradations", "tests", "configs", "pyproject.toml")

PHASES = {
    # files mutated, tests run, mutant-name patterns run (None: every mutant of the files)
    "solvers": dict(
        mutate=["solvers/*"],
        tests=["test_noise_paths.py", "test_sampler_formulas.py", "test_ddrm_reference.py", "test_solvers_ddrm.py",
               "test_nested.py", "test_solvers_samplers.py", "test_solvers_timesteps.py", "test_feedback.py",
               "test_restore.py", "test_units.py"],
        names=None),
    "metrics": dict(
        mutate=["ipsolve/metrics.py", "ipsolve/services/eval_report.py"],
        tests=["test_metrics.py", "test_report_truths.py",
               "test_metric_truths.py::test_lpips_equals_the_hand_computation_on_minus_one_to_one_inputs"],
        names=[f"ipsolve.metrics.x_{f}__mutmut_*" for f in (
            "psnr", "lpips_distance", "fid_from_features", "frechet_distance", "kid_from_features", "log_fid_auc",
            "image_features")] + [f"ipsolve.services.eval_report.x_{f}__mutmut_*" for f in (
                "summarise", "log_fid_aucs", "read_records")]),
    "units": dict(
        mutate=["ipsolve/services/degrade_file.py", "ipsolve/services/restore_request.py", "ipsolve/config.py",
                "ipsolve/degrade.py"],
        tests=["test_units.py", "test_restore.py", "test_measurement.py", "test_units_inprocess.py"],
        names=["ipsolve.services.degrade_file.x_degrade_file__mutmut_*",
               "ipsolve.services.restore_request.x_restore_inputs__mutmut_*",
               "ipsolve.services.restore_request.x__check_runs_on__mutmut_*",
               "ipsolve.config.xǁTaskConfigǁ*", "ipsolve.degrade.x_degrade__mutmut_*"]),
    "degradations": dict(
        mutate=["degradations/base.py", "degradations/denoising.py", "degradations/superresolution.py",
                "degradations/colorization.py", "degradations/inpainting.py"],
        tests=["test_operators.py", "test_operators_reference.py", "test_ddrm_reference.py", "test_measurement.py",
               "test_operators_composed.py"],
        names=None),
    # the solvers and operators added after the solvers phase, and what changed in nested / timesteps since
    "new_solvers": dict(
        mutate=["solvers/ddnm.py", "solvers/dps.py", "solvers/timesteps.py", "solvers/nested.py",
                "degradations/composition.py", "degradations/saturation.py", "degradations/linalg.py"],
        tests=["test_solvers_ddnm.py", "test_solvers_guided.py", "test_solvers_guided_exactness.py",
               "test_operators_composed.py", "test_nested.py", "test_anytime_schedule.py",
               "test_nested_restorers.py", "test_noise_paths.py", "test_restore.py", "test_linalg.py"],
        names=["solvers.ddnm.*", "solvers.dps.*", "degradations.composition.*", "degradations.saturation.*",
               "degradations.linalg.*"]
              + [f"solvers.timesteps.x_{f}__mutmut_*" for f in (
                  "plain_ddrm_timesteps", "planned_inner_counts", "matched_inner_timesteps")]
              + [f"solvers.nested.x_{f}__mutmut_*" for f in ("nested", "_plan", "plan", "_schedule",
                                                              "inner_run_lengths")]
              + ["solvers.nested.xǁNestedRunǁ_inner_run__mutmut_*"]),
    "registry": dict(
        mutate=["degradations/registry.py"],
        tests=["test_operators.py", "test_operators_composed.py", "test_measurement.py"],
        names=["degradations.registry.x_make__mutmut_*", "degradations.registry.x__composition__mutmut_*",
               "degradations.registry.x__saturation__mutmut_*"]),
    # what decides reuse, batch groups and memory: the key and estimate functions (the rest of these modules,
    # orchestration and file writing, is left out: about 10 s a mutant on the shared machine)
    "bookkeeping": dict(
        mutate=["ipsolve/services/batch_restore.py", "ipsolve/services/evaluation.py", "ipsolve/provenance.py",
                "ipsolve/resources.py"],
        tests=["test_keys.py", "test_estimates.py", "test_eval_reproducible.py"],
        names=["ipsolve.provenance.x_operator_key__mutmut_*"]
              + [f"ipsolve.services.batch_restore.x_{f}__mutmut_*" for f in ("job_key", "_groups")]
              + ["ipsolve.services.batch_restore.xǁBatchSettingsǁas_dict__mutmut_*",
                 "ipsolve.services.evaluation.x_as_saved__mutmut_*",
                 "ipsolve.services.evaluation.xǁEvaluatorǁkey__mutmut_*"]
              + [f"ipsolve.resources.x_{f}__mutmut_*" for f in ("estimate_bytes", "unet_forward_bytes")]),
    "pigdm": dict(
        mutate=["solvers/pigdm.py"],
        tests=["test_solvers_guided.py", "test_solvers_guided_exactness.py", "test_nested_restorers.py",
               "test_pigdm_reference.py", "test_divergence.py"],
        names=None),
    # ΠGDM's weights, start and remedy (the functions added with them)
    "pigdm_weights": dict(
        mutate=["solvers/pigdm.py"],
        tests=["test_pigdm_reference.py", "test_solvers_guided.py", "test_divergence.py"],
        names=[f"solvers.pigdm.x_{f}__mutmut_*" for f in (
            "remedy", "guidance_weight", "x0_weight", "ddim_c2", "pigdm_init", "pigdm_start", "pseudo_inverse", "back_projection",
            "_svd_back_projection", "check_choice")]),
    # K posterior samples (2026-12-02): the estimate functions, the std coverage, eval's mean rows and
    # calibration, a folder restore's per-measurement preview (eval's batching and file writing left out, and
    # summarise / log_fid_aucs, whose mean-row lines are a small part of what the metrics phase mutates)
    "estimates": dict(
        mutate=["solvers/estimates.py", "ipsolve/metrics.py", "ipsolve/services/eval_report.py",
                "ipsolve/services/evaluation.py", "ipsolve/services/batch_restore.py"],
        tests=["test_posterior_estimate.py", "test_eval_samples.py", "test_folder_estimate.py",
               "test_restore_estimate.py"],
        names=["solvers.estimates.*"]
              + [f"ipsolve.metrics.x_{f}__mutmut_*" for f in ("std_coverage", "exact_coverage")]
              + [f"ipsolve.services.eval_report.x_{f}__mutmut_*" for f in (
                  "per_image_rows", "calibration", "estimate_label")]
              + ["ipsolve.services.evaluation.x_samples_part__mutmut_*",
                 "ipsolve.services.evaluation.xǁOutputLayoutǁmean_output__mutmut_*",
                 "ipsolve.services.evaluation.xǁOutputLayoutǁstored_key__mutmut_*",
                 "ipsolve.services.evaluation.xǁEvaluatorǁ_mean_scores__mutmut_*",
                 "ipsolve.services.batch_restore.x_preview_of__mutmut_*"]),
    # DeepInverse interop; the deepinv subclasses are defined inside the cached `_classes()`, which mutmut
    # leaves alone (a decorated function): they were mutated by hand (docs/testing.md)
    "interop": dict(
        mutate=["ipsolve/interop/deepinv.py"],
        tests=["test_interop_deepinv.py"],
        names=[f"ipsolve.interop.deepinv.x_{f}__mutmut_*" for f in (
            "to_deepinv", "as_denoiser", "grid_sigmas", "nearest_timesteps", "from_deepinv", "_real_spectrum",
            "physics_spec")]
              + [f"ipsolve.interop.deepinv.xǁ{c}ǁ*" for c in (
                  "DenoiserModel", "DeepinvSVDOperator", "DeepinvLinearOperator", "DeepinvForward")]),
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", 37: "type check", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
          -11: "segfault", -9: "segfault"}
DETECTED = {"killed", "timeout", "segfault"}


def setup_cfg(phase: dict) -> str:
    lines = ["[mutmut]", "source_paths =", "    solvers/", "    degradations/", "    ipsolve/", "only_mutate ="]
    lines += [f"    {p}" for p in phase["mutate"]]
    lines += ["do_not_mutate_patterns =", r"    ^\s*raise\s", r"    ^\s*print\(", "also_copy =", "    configs/",
              "pytest_add_cli_args =", "    -p", "    no:cacheprovider", "pytest_add_cli_args_test_selection ="]
    lines += [f"    tests/{t}" for t in phase["tests"]]
    lines += ["process_isolation = forkserver", ""]
    return "\n".join(lines)


def prepare(work: Path, name: str) -> Path:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    for item in COPIED:
        source, target = ROOT / item, folder / item
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    (folder / "setup.cfg").write_text(setup_cfg(PHASES[name]))
    return folder


def environment() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the copies under mutants/ must win
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def mutmut() -> str:
    return str(Path(sys.executable).with_name("mutmut"))


def retry_survivors(work: Path, name: str) -> None:
    """Forget the survivors' verdicts so the next run tests them again (with the tests added since)."""
    for meta in (work / name / "mutants").rglob("*.meta"):
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        if any(code is not None and STATUS.get(code) not in DETECTED for code in codes.values()):
            data["exit_code_by_key"] = {k: (None if c is not None and STATUS.get(c) not in DETECTED else c)
                                        for k, c in codes.items()}
            meta.write_text(json.dumps(data))


def run(work: Path, name: str, retry: bool = False) -> None:
    folder = prepare(work, name)
    if retry:
        retry_survivors(work, name)
    names = PHASES[name]["names"] or []
    print(f"== {name}: mutmut run in {folder}", flush=True)
    subprocess.run([mutmut(), "run", "--max-children", "1", *names], cwd=folder, env=environment(), check=False)


def verdicts(work: Path, name: str) -> dict:
    phase, found = PHASES[name], {}
    patterns = phase["names"]
    mutants = work / name / "mutants"
    for meta in mutants.rglob("*.meta"):
        source = str(meta.relative_to(mutants))[:-len(".meta")]
        if not any(_matches(source, p) for p in phase["mutate"]):
            continue
        for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if patterns is None or any(_matches(key, p) for p in patterns):
                found[key] = code
    return found


def _matches(key: str, pattern: str) -> bool:
    import fnmatch
    return fnmatch.fnmatch(key, pattern)


def summary(work: Path, name: str, diff: bool) -> None:
    found = verdicts(work, name)
    counts = Counter("not run" if code is None else STATUS.get(code, f"exit {code}") for code in found.values())
    print(f"== {name}: {len(found)} mutants: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    for key, code in sorted(found.items()):
        if code is not None and STATUS.get(code) not in DETECTED:
            print(f"  {STATUS.get(code, code)}: {key}")
            if diff:
                shown = subprocess.run([mutmut(), "show", key], cwd=work / name, env=environment(),
                                       capture_output=True, text=True).stdout
                for line in shown.splitlines():
                    if line[:1] in "+-" and not line.startswith(("+++", "---")):
                        print("      " + line)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phases", nargs="+", help=f"all, or some of {', '.join(PHASES)}")
    parser.add_argument("--work", default="/tmp/ipsolve-mutation", help="where the phase folders go")
    parser.add_argument("--summary", action="store_true", help="print the results instead of running")
    parser.add_argument("--diff", action="store_true", help="with --summary: show each survivor's change")
    parser.add_argument("--retry-survivors", action="store_true",
                        help="test the survivors of an earlier run again (after adding tests)")
    args = parser.parse_args(argv)
    names = list(PHASES) if args.phases == ["all"] else args.phases
    unknown = set(names) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {sorted(unknown)}; choose among {list(PHASES)}")
    for name in names:
        summary(Path(args.work), name, args.diff) if args.summary else run(Path(args.work), name, args.retry_survivors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
