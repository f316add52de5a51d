"""The benchmark suite's command line.

    python -m benchmarks run --suite quick                      # CPU, <= 15 min on 2 cores
    python -m benchmarks run --suite full --device cuda         # one GPU, <= 8 min
    python -m benchmarks run --suite full --device cpu          # the full suite's CPU sizes
    python -m benchmarks run --suite my_suite.toml --seeds 5 --out runs/mine
    python -m benchmarks report runs/mine                       # report.md and plots from results.json

``run`` writes ``results.json`` (rewritten after every run), ``report.md``, ``plots/*.png``,
``tensorboard/<run>/`` and ``samples/`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite")
    run.add_argument("--suite", default="quick", help="quick | full | a .toml file")
    run.add_argument("--device", default="cpu", help="cpu | cuda | cuda:1 ...")
    run.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the suite's)")
    run.add_argument("--out", type=Path, default=None, help="default: benchmark_results/<suite>-<device type>")
    run.add_argument("--resume", action="store_true", help="keep the finished runs of --out/results.json")
    report = sub.add_parser("report", help="regenerate report.md and the plots from results.json")
    report.add_argument("dir", type=Path)
    args = parser.parse_args(argv)

    import torch

    from benchmarks.run import run_suite, write_outputs
    from benchmarks.suite import load_suite

    if args.command == "report":
        write_outputs(args.dir, json.loads((args.dir / "results.json").read_text()))
        print(f"wrote {args.dir / 'report.md'} and the plots")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    suite = load_suite(args.suite, device.type, args.seeds)
    out = args.out or Path("benchmark_results") / f"{suite.name}-{device.type}"
    command = " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])])
    results = run_suite(suite, device, out, resume=args.resume, command=command)
    print(
        f"{len(results['runs'])} runs in {results['seconds']:.0f} s; wrote {out / 'results.json'}, "
        f"{out / 'report.md'} and {len(results['plots'])} plots"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
