"""`ipsolve degrade`: its arguments, and the line it prints after the degrade service
(`ipsolve.services.degrade_file`)."""
from __future__ import annotations

from ipsolve.services.values import image_size, seed_int, unit_float


def add_degrade_command(commands):
    """`ipsolve degrade`: its arguments and its run function."""
    parser = commands.add_parser(
        "degrade", help="make a measurement y = H x + noise from a clean image",
        description="Degrade a clean image and write the measurement image OUT plus its sidecar OUT.json "
        "(operator, noise in both units, mask). Channels follow the image: a gray image stays one channel "
        "(--gray makes a color image gray); colorization needs a color image.")
    parser.add_argument("image", metavar="IMAGE", help="clean image (PNG, JPEG, …)")
    parser.add_argument("--task", required=True, help="operator name: deno, sr4, sr16, color, inp, …")
    parser.add_argument("--sigma-y", type=unit_float, default=0.0, metavar="S",
                        help="noise standard deviation in [0, 1] pixel units (model units are twice this; default 0)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the noise and the random inp mask")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="measurement image to write (.png)")
    parser.add_argument("--mask", metavar="PNG", help="inpainting mask, white = observed (default: random 50%%)")
    parser.add_argument("--size", type=image_size, metavar="HxW", help="resize the clean image first")
    parser.add_argument("--gray", action="store_true", help="convert the clean image to one gray channel")
    parser.set_defaults(run=run_degrade)


def run_degrade(args) -> int:
    """Plan (everything checked, nothing written), then write the measurement and its sidecar."""
    from ipsolve.services.degrade_file import plan_degrade, run_degrade_plan

    made = run_degrade_plan(plan_degrade(args.image, args.output, args.task, args.sigma_y, seed=args.seed,
                                         mask=args.mask, size=args.size, gray=args.gray))
    print(f"{made.output}: {made.op.name} measurement of a {'x'.join(map(str, made.image_shape))} image, "
          f"sigma_y {args.sigma_y} pixel = {2 * args.sigma_y} model units")
    return 0
