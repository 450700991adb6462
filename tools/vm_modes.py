"""Time the same network built with the Relax VM in bytecode and in compiled mode.

    .venv/bin/python tools/vm_modes.py --weights ../shared/models/resnet20-12fca82f.th \\
        --data imagefolder:../shared/data/cifar10-jpeg-q75.zip --bits 1,1 --bits 2,2

Both libraries are timed in alternating rounds in one process (1 thread): the evidence
behind mpqc.build.compile.EXEC_MODE.
"""
import argparse
from pathlib import Path

import numpy as np

import mpqc.build.compile as compile_mod
from mpqc import runtime
from mpqc.build.network import NetworkSpec
from mpqc.targets import load_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--data", default=None, help="calibration data (dataset spec)")
    parser.add_argument("--bits", action="append", default=None, help="A,W (repeatable)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out-dir", default="vm-modes")
    args = parser.parse_args()
    host, out = load_target("host"), Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for bits in args.bits or ["1,1"]:
        spec = NetworkSpec(model=args.model, weights=args.weights, data=args.data,
                           config=f"uniform:{bits}")
        libs = {}
        for mode in ("bytecode", "compiled"):
            compile_mod.EXEC_MODE = mode
            path = out / f"{args.model}-{bits.replace(',', '')}-{mode}.so"
            compile_mod.compile_library(spec, host, path)
            libs[mode] = runtime.load(path)
        rounds = {mode: [] for mode in libs}
        for _ in range(args.rounds):
            for mode, lib in libs.items():
                rounds[mode].append(lib.time(repeats=args.repeats, threads=1).median_ms)
        med = {mode: float(np.median(v)) for mode, v in rounds.items()}
        print(f"uniform {bits}: " + ", ".join(
            f"{m} [{', '.join(f'{x:.4f}' for x in v)}] ms" for m, v in rounds.items()))
        print(f"uniform {bits}: median of rounds bytecode {med['bytecode']:.4f} ms, compiled "
              f"{med['compiled']:.4f} ms, ratio {med['bytecode'] / med['compiled']:.3f}")


if __name__ == "__main__":
    main()
