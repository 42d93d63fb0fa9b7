"""python -m launch.bench [solvers|fusion|noise|loop|metrics|sweep ...] [--quick] [--write-reference]"""
from __future__ import annotations

import argparse
import os
import sys
import time
from importlib import import_module

from common.errors import NfebenchError
from common.registry import check_choice

from . import PARTS, __doc__ as DOC
from .report import PINNED_ENV, allocator_note, allocator_pinned


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `nfebench: error:` line, as every other entry point
        raise NfebenchError(message)


def parse(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog="python -m launch.bench", description=DOC.splitlines()[0],
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=DOC.split("\n", 2)[2])
    p.add_argument("parts", nargs="*", help=f"parts to run: {', '.join(PARTS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="few rounds and small cases: for iterating, not for results")
    p.add_argument("--write-reference", action="store_true",
                   help="add the outputs results/bench/solver_outputs.npz lacks (new solvers or variants) from "
                        "this code, then stop; the entries already there are kept")
    args = p.parse_args(argv)
    args.parts = [check_choice("bench part", part, PARTS) for part in args.parts] or list(PARTS)
    return args


def main(argv=None) -> int:
    from launch.cli import fail

    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv)
    except NfebenchError as err:
        fail(err)
    if not allocator_pinned():
        # glibc reads these once, at start-up: a fresh process image is the only way to pin them
        os.environ.update(PINNED_ENV)
        os.execv(sys.executable, [sys.executable, "-m", "launch.bench", *argv])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.write_reference:
        from .outputs import REFERENCE, write_reference
        from .planning import noise_schedule

        added = write_reference(noise_schedule())
        print(f"added {len(added)} outputs to {REFERENCE}: {', '.join(added) or 'none'}")
        return 0
    print(f"bench: {allocator_note()}", flush=True)
    failed, t_all = [], time.perf_counter()
    for part in args.parts:
        t0 = time.perf_counter()
        print(f"== bench {part}{' (quick)' if args.quick else ''}", flush=True)
        goals = import_module(f".{part}", __package__).run(quick=args.quick)
        failed += [g.goal for g in goals if g.status == "NOT MET"]
        print(f"== bench {part}: {time.perf_counter() - t0:.0f} s wall", flush=True)
    print(f"bench: {time.perf_counter() - t_all:.0f} s wall; goals not met: {len(failed)}"
          + "".join(f"\n  - {g}" for g in failed))
    return 0  # a goal not met is a finding for results/bench/, not a failure of the bench


if __name__ == "__main__":
    sys.exit(main())
