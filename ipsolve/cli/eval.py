"""`ipsolve eval`: its arguments, and the line it prints after the evaluation service
(`ipsolve.services.evaluation`, which plans, then runs). Exit codes: 0 all done, 1 some images could not
be read, 2 refused before anything was written. Imported only when the command runs."""
from __future__ import annotations

import sys

from ipsolve.services.values import device_name, folder_name, positive_int


def add_eval_arguments(parser) -> None:
    """Arguments of `ipsolve eval`."""
    parser.add_argument("--config", required=True,
                        help="a packaged eval config (celeba_table2, embedded_table2, embedded_smoke) or a YAML path; "
                        "its `samples: K` draws K samples per image: the tables then give sample 1 of K and the "
                        "mean of K (PSNR / LPIPS) and calibration.csv the std's coverage")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="folder of png/jpg images, sorted by name, fitted to the model's size")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="evaluate only the first N images")
    parser.add_argument("--out", type=folder_name, default=None, metavar="DIR",
                        help="output folder (default runs/eval-CONFIG); a rerun reuses every stored result "
                        "that the same config, model, image and seed produced, and recomputes the rest")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results in --out when an evaluation with other settings made them "
                        "(only the files that evaluation recorded it wrote are removed)")
    parser.add_argument("--model", help="model name or path, overriding the config's `model`")
    parser.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N (default: cuda when available, "
                        "per rank)")
    parser.add_argument("--batch-size", type=positive_int, metavar="B",
                        help="images per solver batch (config's default)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID / KID (PSNR and LPIPS only)")
    parser.add_argument("--force", action="store_true", help="run even when the memory estimate says a batch "
                        "(batch_size images x the config's samples K) cannot fit")


EXIT_SOME_FAILED = 1


def run_eval(args) -> int:
    """`ipsolve eval`: run, then print where the tables are and how much was reused (rank 0); exit code 1
    when some images could not be read (the line says how many, failed.csv why)."""
    from ipsolve.services.evaluation import plan_eval, run_eval_plan

    plan = plan_eval(args.config, args.data, args.out, model_name=args.model, limit=args.limit, device=args.device,
                     batch_size=args.batch_size, overwrite=args.overwrite, fid=not args.no_fid, force=args.force)
    report = run_eval_plan(plan)
    out = plan.layout.root
    if not report:
        return 0
    if report["images"]:
        print(f"{out / 'table.md'}: {report['images']} images, {report['computed']} computed "
              f"({report['replaced']} replacing results of other settings), {report['reused']} reused")
    failed = len(report["failed"])
    if failed:
        print(f"ipsolve: {failed} of {failed + report['images']} images could not be read and were left out: "
              f"{out / 'failed.csv'} says why", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0
