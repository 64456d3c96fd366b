"""Record a fit, kill it, resume it, plot it.

A small network is trained with Adam in a child process that records its run in SQLite
(`solve(..., history=...)`). Once the file holds a checkpoint, this script kills the child
with SIGKILL, as a cluster's wall-time limit or a crash would. The file still holds every
row committed before the kill; `opf.resume` continues the run from its last checkpoint, and
it ends bit for bit where an uninterrupted run ends. The convergence of both parts is drawn
with `opf.plot.convergence`, the resume point dotted.

Run: `python examples/resume_after_kill.py [--quick] [--output history.png]`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib
import optax

import optiframe as opf


def mse(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


def problem() -> opf.OptimizationProblem:
    """A 2-32-1 tanh network fitting sin(3 x0) cos(x1) on 1,024 points."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.uniform(k1, (1024, 2), minval=-1, maxval=1)
    y = (jnp.sin(3 * x[:, 0]) * jnp.cos(x[:, 1]))[:, None]
    params = {"w1": jax.random.normal(k2, (2, 32)), "b1": jnp.zeros(32),
              "w2": 0.2 * jax.random.normal(k3, (32, 1))}
    return opf.OptimizationProblem(mse, params, (x, y))


def fit(path: str, steps: int) -> opf.OptimizationSolution:
    """Adam on `problem()`, recorded in `path`, a checkpoint at least every 0.1 s."""
    history = opf.History(path, checkpoint_seconds=0.1)
    return opf.solve(problem(), optax.adam(3e-3), maxiters=steps, history=history)


def checkpoints(path: str) -> int:
    """How many checkpoints `path` holds (0 before the child created it)."""
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
    except sqlite3.Error:
        return 0


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short fit, for a smoke run")
    parser.add_argument("--output", default="history.png", help="where to save the figure")
    parser.add_argument("--path", default=None, help="the history file (default: temporary)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or (40_000 if args.quick else 200_000)
    if args.child:  # the run that gets killed
        fit(args.path, steps)
        return {}
    path = args.path or os.path.join(tempfile.mkdtemp(), "fit.sqlite")

    # 1. the fit, in a child process, killed once it has written a checkpoint
    here = pathlib.Path(__file__).resolve()
    child = subprocess.Popen([sys.executable, str(here), "--child", "--path", path,
                              "--steps", str(steps)])
    while checkpoints(path) < 2:
        if child.poll() is not None:
            raise SystemExit("the fit ended before it could be killed: raise --steps")
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    (killed,) = opf.read_history(path)
    print(f"killed: {len(killed.iteration):,} iterations recorded, the last checkpoint at "
          f"iteration {killed.checkpoints[-1]:,}, retcode {killed.retcode}")

    # 2. resume it: the rest of the budget, from the last checkpoint
    sol = opf.resume(path)
    (run,) = opf.read_history(path)
    print(f"resumed from iteration {run.resumed_at[0]:,}: {sol.stats.iterations:,} more, "
          f"{sol.retcode}, loss {sol.objective:.3e}")

    # 3. the convergence of both parts
    matplotlib.use("Agg")
    fig = opf.plot.convergence(run)
    fig.axes[0].set_title(f"Adam, killed and resumed at iteration {run.resumed_at[0]:,}")
    fig.savefig(args.output, dpi=100)
    print(f"saved {args.output}")
    return {"killed": killed, "run": run, "solution": sol, "path": path}


if __name__ == "__main__":
    main()
