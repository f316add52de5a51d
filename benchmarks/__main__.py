"""The benchmark suite's command line.

    python -m benchmarks run --suite quick                      # CPU, <= 15 min on 2 cores
    python -m benchmarks run --suite full --device cuda         # one GPU, <= 8 min
    python -m benchmarks run --suite full --device cpu          # the full suite's CPU sizes
    python -m benchmarks run --suite my_suite.toml --seeds 5 --out runs/mine
    python -m benchmarks run --suite full --device cuda --nproc 8   # data-parallel runs under torchrun
    python -m benchmarks report runs/mine                       # report.md and plots from results.json
    python -m benchmarks rescore runs/mine                      # against the references the tasks ship now

``run`` writes ``results.json`` (rewritten after every run), ``report.md``, ``plots/*.png``,
``tensorboard/<run>/`` and ``samples/`` under ``--out``. With ``--nproc P`` the command starts itself
again under ``torchrun`` with P processes on this node: every run trains data-parallel (each rank
with its share of the run's envs, on ``cuda:LOCAL_RANK`` or the CPU), the evaluations are sharded,
and rank 0 writes (docs/design.md, section 6). Started by ``torchrun`` directly (any number of nodes),
it uses the job's processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from diffusion_gym.validation import PositiveInt, argument

os.environ.setdefault("MPLBACKEND", "Agg")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite")
    run.add_argument("--suite", default="quick", help="quick | full | a .toml file")
    run.add_argument("--device", default="cpu", help="cpu | cuda | cuda:1 ...")
    run.add_argument("--seeds", type=argument(PositiveInt), default=None, help="number of seeds (default: the suite's)")
    run.add_argument("--out", type=Path, default=None, help="default: benchmark_results/<suite>-<device type>")
    run.add_argument("--resume", action="store_true", help="keep the finished runs of --out/results.json")
    run.add_argument(
        "--overwrite", action="store_true", help="replace the results in --out (its report, plots, samples, logs)"
    )
    run.add_argument(
        "--nproc", type=argument(PositiveInt), default=1, help="processes on this node (data-parallel, torchrun)"
    )
    report = sub.add_parser("report", help="regenerate report.md and the plots from results.json")
    report.add_argument("dir", type=Path)
    rescore = sub.add_parser("rescore", help="rescore results.json against the tasks' shipped references")
    rescore.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "rescore":
        from benchmarks.rescore import main as rescore_main

        try:
            grids = rescore_main(args.dir)
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
        print(f"rescored {len(grids)} grids ({', '.join(grids) or 'none shipped'}); wrote {args.dir / 'report.md'}")
        return 0

    import torch

    from benchmarks.results_file import read_results
    from benchmarks.run import check_out, run_suite, write_outputs
    from benchmarks.suite import load_suite
    from diffusion_gym import distributed
    from diffusion_gym.output_paths import check_output_dir

    if args.command == "report":
        try:
            results = read_results(args.dir)
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
        write_outputs(args.dir, results)
        print(f"wrote {args.dir / 'report.md'} and the plots")
        return 0
    argv = list(argv if argv is not None else sys.argv[1:])
    if args.nproc < 1:
        parser.error("--nproc must be >= 1")
    if args.nproc > 1 and not distributed.launched():
        # torchrun would read --nproc as its own (an abbreviation of --nproc_per_node): it is its setting now.
        rest = [a for i, a in enumerate(argv) if not a.startswith("--nproc") and argv[i - 1 : i] != ["--nproc"]]
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
        return subprocess.run([*launch, "-m", "benchmarks", *rest], check=False).returncode
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    device = distributed.setup(device)
    suite = load_suite(args.suite, device.type, args.seeds)
    world = distributed.world_size()
    if args.nproc > 1 and args.nproc != world:
        parser.error(f"--nproc {args.nproc} inside a torchrun job of {world} processes")
    default_out = f"{suite.name}-{device.type}" + (f"-{world}proc" if world > 1 else "")
    out = args.out or Path("benchmark_results") / default_out
    try:
        check_output_dir(out, "--out")
        check_out(out, args.resume, args.overwrite)
    except ValueError as err:
        parser.error(str(err))
    if world > 1 and not any(a.startswith("--nproc") for a in argv):
        argv += ["--nproc", str(world)]
    command = " ".join(["python -m benchmarks", *argv])
    results = run_suite(suite, device, out, resume=args.resume, command=command, overwrite=args.overwrite)
    main = distributed.is_main()
    distributed.shutdown()  # not after a failure: the failed rank exits and torchrun stops the others
    if main:
        print(
            f"{len(results['runs'])} runs in {results['seconds']:.0f} s; wrote {out / 'results.json'}, "
            f"{out / 'report.md'} and {len(results['plots'])} plots"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
