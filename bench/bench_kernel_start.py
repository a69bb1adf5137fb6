"""What one pooled kernel costs to start: forked from the pool's zygote versus a new interpreter.

Each round starts ``--kernels`` kernels one after the other in a fresh :class:`KernelPool`
(``size=0``: started on demand, handed out, shut down), warmed with the backfill stages' preload
modules (pandas, numpy, qsdk.quant, the loader), once with ``start="spawn"`` and once with
``start="fork"``, in alternating order. It prints per kernel: wall time, and CPU seconds of the
kernels and the zygote (the pool's reaped children, ``RUSAGE_CHILDREN``; the zygote's own start
and imports are spread over the round's kernels) and of the pool's process. Ratios are medians of
per-round ratios (fork / spawn).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median  # noqa: E402

PRELOAD = ["pandas", "numpy", "qsdk", "qsdk.quant", "qsdk.quant.calendar", "qsdk.quant.features",
           "qsdk.lakehouse.loader"]


def _cpu() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def one_round(start: str, kernels: int) -> tuple[float, float, float]:
    """(wall, kernels' and zygote's CPU, pool process's CPU) per kernel."""
    from qsdk.execution.kernels import KernelPool

    own0, children0 = _cpu()
    started = time.perf_counter()
    with KernelPool(0, preload=PRELOAD, start=start) as pool:  # type: ignore[arg-type]
        for _ in range(kernels):
            pool.release(pool.acquire())
    wall = time.perf_counter() - started
    own1, children1 = _cpu()
    return wall / kernels, (children1 - children0) / kernels, (own1 - own0) / kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kernels", type=int, default=6, help="kernels per round")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    runs: dict[str, list[tuple[float, float, float]]] = {"spawn": [], "fork": []}
    for round_ in range(1, args.repeat + 1):
        for start in (("spawn", "fork") if round_ % 2 else ("fork", "spawn")):
            runs[start].append(one_round(start, args.kernels))
            wall, kernel_cpu, own_cpu = runs[start][-1]
            print(f"  round {round_}: {start:<5} per kernel {wall:5.2f} s wall, {kernel_cpu:5.2f} s CPU in the "
                  f"kernels and zygote, {own_cpu:5.2f} s in the pool's process")
    for start, rows in runs.items():
        print(f"{start:<5} median per kernel: {median([r[0] for r in rows]):5.2f} s wall, "
              f"{median([r[1] + r[2] for r in rows]):5.2f} s CPU")
    walls = [f[0] / s[0] for f, s in zip(runs["fork"], runs["spawn"], strict=True)]
    cpus = [(f[1] + f[2]) / (s[1] + s[2]) for f, s in zip(runs["fork"], runs["spawn"], strict=True)]
    print(f"fork / spawn (medians of per-round ratios): wall {median(walls):.2f}x, CPU {median(cpus):.2f}x")


if __name__ == "__main__":
    main()
