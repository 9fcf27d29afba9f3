"""Time every degradation operator at 3×256×256, batch 4, float32 on the CPU (median of runs, ms).

Targets: construction ≤ 10 ms (≤ 200 ms for the separable operators that need two 1-D SVDs);
V(Vt(x)) ≤ 50 ms for sr16, color and inp.

    python scripts/bench_operators.py [--size 256] [--batch 4] [--repeats 7] [--clock wall|cpu]

--clock cpu runs on one thread and times its CPU time (time.thread_time): figures that stay meaningful
when other processes load the machine, where wall-clock medians do not.
"""
import argparse
import statistics
import time

import torch

import degradations

NAMES = ["deno", "sr4", "sr16", "color", "inp", "inp_box", "deblur_uni", "deblur_gauss", "deblur_aniso",
         "sr_bicubic4", "sr_bicubic16", "cs2", "cs4"]


def median_ms(fn, repeats, clock):
    fn()  # warm-up (caches, allocator)
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append((clock() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    if args.clock == "cpu":
        torch.set_num_threads(1)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    size = (args.size, args.size)
    x = torch.rand(args.batch, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    print(f"3x{args.size}x{args.size}, batch {args.batch}, float32, {torch.get_num_threads()} threads; "
          f"median {args.clock} time of {args.repeats} runs, ms")
    print(f"{'operator':<14}{'construct':>10}{'H':>9}{'H_pinv':>9}{'V(Vt(x))':>10}")
    for name in NAMES:
        construct = median_ms(lambda: degradations.make(name, image_size=size), args.repeats, clock)
        op = degradations.make(name, image_size=size)
        y = op.H(x)
        row = [construct, median_ms(lambda: op.H(x), args.repeats, clock),
               median_ms(lambda: op.H_pinv(y), args.repeats, clock),
               median_ms(lambda: op.V(op.Vt(x)), args.repeats, clock)]
        print(f"{name:<14}" + "".join(f"{value:>{w}.1f}" for value, w in zip(row, (10, 9, 9, 10))))


if __name__ == "__main__":
    main()
