"""Run histories: what `solve(..., history=...)` records, that a killed run loses nothing
committed, `resume`, `read_history` and its errors."""

import _thread
import json
import pathlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fit_history import CHECKPOINT_EVERY, fit, problem

import optiframe as opf
from optiframe.backends._record import params_every

HERE = pathlib.Path(__file__).resolve().parent


def rosenbrock(u, p):
    return jnp.sum(100.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2)


def same(a, b) -> bool:
    """The pytrees `a` and `b` are equal bit for bit."""
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --------------------------------------------------------------------------- recording


def test_a_host_run_records_every_iteration_with_its_point(tmp_path):
    path = tmp_path / "run.sqlite"
    prob = opf.OptimizationProblem(rosenbrock, jnp.zeros(4))
    sol = opf.solve(prob, opf.LBFGSB(), history=path)
    (run,) = opf.read_history(path)
    assert run.retcode is opf.ReturnCode.Success and run.message == sol.message
    assert run.objective == sol.objective and run.fevals == sol.stats.fevals
    np.testing.assert_array_equal(run.iteration, np.arange(1, sol.stats.iterations + 1))
    assert np.all(np.diff(run.time) >= 0) and np.all(np.diff(run.fevals_trace) >= 0)
    assert run.fevals_trace[-1] <= sol.stats.fevals
    # 4 float64 values: the parameters of every iteration, and the objective there
    np.testing.assert_array_equal(run.params_iteration, run.iteration)
    for x, f in zip(run.params, run.objective_trace):  # SciPy's float64 evaluations
        assert f == pytest.approx(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2),
                                  rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(run.params[-1], sol.u, rtol=1e-6)
    assert run.leaves == [["", [4], str(jnp.zeros(4).dtype)]]
    assert run.algorithm == repr(opf.LBFGSB()) and run.keywords["maxiters"] is None
    assert set(run.versions) == {"optiframe", "jax", "scipy"}
    assert list(run.checkpoints) == []  # a run that finished is not resumed: none needed


def test_a_fused_device_run_records_every_step_and_the_parameters_every_kth(tmp_path):
    path = tmp_path / "run.sqlite"
    prob = problem("full")  # 193 parameters: every 8th iteration (8 * 193 / 8 <= 256 bytes)
    n = sum(x.size for x in jax.tree.leaves(prob.u0))
    assert params_every(n) == 8
    sol = opf.solve(prob, optax.adam(1e-2), maxiters=3000, history=opf.History(
        path, checkpoint_every=1000, checkpoint_seconds=None))
    (run,) = opf.read_history(path)
    np.testing.assert_array_equal(run.iteration, np.arange(1, 3001))
    np.testing.assert_array_equal(run.fevals_trace, np.arange(1, 3001))
    np.testing.assert_array_equal(run.params_iteration, np.arange(8, 3001, 8))
    # a checkpoint at the first chunk boundary after every 1,000 iterations
    assert len(run.checkpoints) >= 2 and np.all(np.diff(run.checkpoints) >= 1000)
    assert run.checkpoints[0] >= 1000
    # each recorded objective is fun at the recorded point (float32 evaluation)
    unravel = jax.flatten_util.ravel_pytree(prob.u0)[1]
    for i, x in zip(run.params_iteration[::50], run.params[::50]):
        f = float(prob.f.fun(unravel(jnp.asarray(x, jnp.float32)), prob.p))
        assert run.objective_trace[i - 1] == pytest.approx(f, rel=1e-4)
    assert [leaf[0] for leaf in run.leaves] == ["['b1']", "['w1']", "['w2']"]
    assert run.retcode is opf.ReturnCode.MaxIters and run.objective == sol.objective
    frame = run.frame()
    assert list(frame.columns) == ["iteration", "time", "objective", "fevals"]
    assert len(frame) == 3000


def test_a_stepwise_run_records_what_its_callback_saw(tmp_path):
    path, seen = tmp_path / "run.sqlite", []
    prob = opf.OptimizationProblem(rosenbrock, jnp.zeros(4))
    sol = opf.solve(prob, optax.adam(1e-2), maxiters=300, history=path,
                    callback=lambda s, loss: seen.append(loss) or s.iter == 250)
    (run,) = opf.read_history(path)
    assert sol.retcode is opf.ReturnCode.Terminated and run.retcode is opf.ReturnCode.Terminated
    np.testing.assert_array_equal(run.iteration, np.arange(1, 251))
    np.testing.assert_array_equal(run.objective_trace, np.asarray(seen, np.float64))
    np.testing.assert_array_equal(run.fevals_trace, np.arange(1, 251))


def test_a_search_records_one_row_per_told_batch(tmp_path):
    path = tmp_path / "run.sqlite"
    prob = opf.OptimizationProblem(rosenbrock, jnp.zeros(4), lb=-2 * jnp.ones(4),
                                   ub=2 * jnp.ones(4))
    sol = opf.solve(prob, opf.Nevergrad("CMA", seed=0, num_workers=4), maxiters=200,
                    history=path)
    (run,) = opf.read_history(path)
    # 49 batches of 4, then the last 4 evaluations: 3 candidates and the recommendation
    np.testing.assert_array_equal(run.iteration, np.arange(1, sol.stats.iterations + 1))
    np.testing.assert_array_equal(run.fevals_trace[:49], np.arange(4, 197, 4))
    assert run.fevals_trace[-1] == sol.stats.fevals == 200
    assert run.objective_trace.min() == pytest.approx(sol.objective)


def test_several_runs_and_two_processes_share_one_file(tmp_path):
    path = tmp_path / "shared.sqlite"
    code = (
        "import sys, jax.numpy as jnp, optax, optiframe as opf\n"
        "f = lambda u, p: jnp.sum((u - p) ** 2)\n"
        "for i in range(3):\n"
        "    prob = opf.OptimizationProblem(f, jnp.zeros(3), jnp.full(3, float(sys.argv[2])))\n"
        "    opf.solve(prob, optax.adam(1e-2), maxiters=2000, history=opf.History(\n"
        "        sys.argv[1], checkpoint_every=100))\n"
        "    opf.solve(prob, opf.LBFGSB(), history=sys.argv[1])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(k)]) for k in (1, 2)]
    assert [proc.wait(timeout=300) for proc in procs] == [0, 0]
    runs = opf.read_history(path)
    assert len(runs) == 12 and all(run.retcode is not None for run in runs)
    adam = [run for run in runs if run.algorithm.startswith("Optax")]
    assert len(adam) == 6
    for run in adam:
        np.testing.assert_array_equal(run.iteration, np.arange(1, 2001))


# --------------------------------------------------------------------------- nothing lost


def _checkpoints(path) -> int:
    try:
        db = sqlite3.connect(path, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:  # not created yet
        return 0


def _killed(path, kind: str, checkpoints: int) -> None:
    """Run `fit_history.py` in a subprocess and SIGKILL it once `checkpoints` are written."""
    proc = subprocess.Popen([sys.executable, str(HERE / "fit_history.py"), str(path), kind])
    try:
        while _checkpoints(path) < checkpoints:
            assert proc.poll() is None, "the fit ended before it could be killed"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("kind, checkpoints", [("full", 1), ("full", 3), ("loader", 2)])
def test_a_killed_run_keeps_its_rows_and_resumes_bit_for_bit(tmp_path, kind, checkpoints):
    path = tmp_path / "killed.sqlite"
    _killed(path, kind, checkpoints)
    (run,) = opf.read_history(path)  # opens cleanly
    assert run.retcode is None and run.ended is None  # it never finished
    last = run.checkpoints[-1]
    assert len(run.checkpoints) >= checkpoints and last >= checkpoints * CHECKPOINT_EVERY
    np.testing.assert_array_equal(run.iteration, np.arange(1, run.iteration[-1] + 1))
    assert run.iteration[-1] >= last  # every row up to the last checkpoint, and more
    resumed = opf.resume(path)
    reference = fit(tmp_path / "reference.sqlite", kind)
    assert same(resumed.u, reference.u) and resumed.objective == reference.objective
    assert resumed.stats.iterations == reference.stats.iterations - last
    (run,) = opf.read_history(path)
    (ref,) = opf.read_history(tmp_path / "reference.sqlite")
    assert run.retcode is ref.retcode is opf.ReturnCode.MaxIters
    np.testing.assert_array_equal(run.iteration, ref.iteration)
    np.testing.assert_array_equal(run.objective_trace, ref.objective_trace)
    np.testing.assert_array_equal(run.fevals_trace, ref.fevals_trace)
    assert run.fevals == ref.fevals
    # the resumed part checkpoints as the run was told to (every 500 iterations)
    assert len(run.checkpoints[run.checkpoints > last]) >= 5


def test_an_interrupted_commit_leaves_nothing_half_written(tmp_path):
    """Ctrl-C inside a commit (here: while the run's row is inserted) rolls the whole
    transaction back and keeps the rows queued; a transaction an interrupt left open is
    undone by the next commit. Nothing is lost or written twice."""
    from optiframe import _sqlite

    record = dict(problem="p", algorithm="a", keywords={}, versions={}, leaves=[], started=0.0)
    interrupts = [True]

    def opening(db):
        ids = _sqlite.insert_run(db, record)
        if interrupts.pop() if interrupts else False:
            raise KeyboardInterrupt
        return ids

    db = _sqlite.connect(tmp_path / "w.sqlite", create=True)
    writer = _sqlite.Writer(db, opening, encode=np.ndarray.tobytes)
    writer.rows = [(1, 0.1, 3.0, 1, None), (2, 0.2, 2.0, 2, None)]
    with pytest.raises(KeyboardInterrupt):
        writer.commit()
    assert writer.run is None and len(writer.rows) == 2 and not db.in_transaction
    db.execute("BEGIN IMMEDIATE")  # as if an interrupt had come between BEGIN and the rest
    writer.commit()
    (run,) = opf.read_history(tmp_path / "w.sqlite")
    np.testing.assert_array_equal(run.iteration, [1, 2])
    np.testing.assert_array_equal(run.objective_trace, [3.0, 2.0])


def test_a_ctrl_c_run_resumes_bit_for_bit(tmp_path):
    path = tmp_path / "interrupted.sqlite"
    fit(tmp_path / "warm-up.sqlite", "full", maxiters=10)  # compiled: Ctrl-C lands mid-run
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    with pytest.warns(UserWarning, match="interrupted"):
        stopped = fit(path, "full", maxiters=10**7)
    timer.cancel()
    assert stopped.retcode is opf.ReturnCode.Terminated
    done = stopped.stats.iterations  # however many this machine ran in 0.5 s
    resumed = opf.resume(path, maxiters=5_000)
    reference = fit(tmp_path / "reference.sqlite", "full", maxiters=done + 5_000)
    assert same(resumed.u, reference.u) and resumed.stats.iterations == 5_000


def test_an_evosax_run_stopped_by_maxtime_resumes_bit_for_bit(tmp_path):
    path = tmp_path / "search.sqlite"
    stopped = fit(path, "evosax", maxtime=0.5, maxiters=10**7)
    assert stopped.retcode is opf.ReturnCode.MaxTime and stopped.stats.iterations > 0
    done = stopped.stats.iterations  # however many this machine ran in 0.5 s
    resumed = opf.resume(path, maxiters=1_000)
    reference = fit(tmp_path / "reference.sqlite", "evosax", maxiters=done + 1_000)
    assert same(resumed.u, reference.u) and resumed.objective == reference.objective


def test_a_scipy_run_restarts_from_its_checkpointed_point(tmp_path):
    path = tmp_path / "scipy.sqlite"
    prob = opf.OptimizationProblem(rosenbrock, jnp.zeros(4))
    stopped = opf.solve(prob, opf.LBFGSB(), maxiters=100, history=path,
                        callback=lambda s, loss: s.iter == 5)
    assert stopped.retcode is opf.ReturnCode.Terminated
    with pytest.warns(UserWarning, match="restarts from there"):
        sol = opf.resume(path)
    assert sol.retcode is opf.ReturnCode.Success
    np.testing.assert_allclose(sol.u, np.ones(4), atol=1e-4)
    (run,) = opf.read_history(path)
    assert run.retcode is opf.ReturnCode.Success
    np.testing.assert_array_equal(run.iteration, np.arange(1, 6 + sol.stats.iterations))
    assert run.fevals == stopped.stats.fevals + sol.stats.fevals
    np.testing.assert_allclose(run.params[4], stopped.u)  # where it stopped and restarted


# --------------------------------------------------------------------------- errors


def test_bad_history_arguments_are_named():
    prob = opf.OptimizationProblem(rosenbrock, jnp.zeros(4))
    with pytest.raises(opf.InvalidProblemError, match=r"solve\(history=...\)` must be a file"):
        opf.solve(prob, opf.LBFGSB(), history=3)
    with pytest.raises(opf.InvalidProblemError, match="checkpoint_every=0"):
        opf.History("a.sqlite", checkpoint_every=0)
    ensemble = opf.EnsembleProblem(prob, u0s=jnp.zeros((2, 4)))
    with pytest.raises(opf.UnsupportedFeatureError, match="ensemble.member"):
        opf.solve(ensemble, optax.adam(1e-2), maxiters=5, history="a.sqlite")


def test_files_that_are_not_readable_histories_are_refused(tmp_path):
    with pytest.raises(opf.OptiframeError, match="does not exist"):
        opf.read_history(tmp_path / "missing.sqlite")
    text = tmp_path / "notes.txt"
    text.write_text("not a database " * 100)
    with pytest.raises(opf.OptiframeError, match="is not an optiframe run history"):
        opf.read_history(text)
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(opf.OptiframeError, match="SQLite file but not an optiframe"):
        opf.read_history(other)
    newer = tmp_path / "newer.sqlite"
    opf.solve(opf.OptimizationProblem(rosenbrock, jnp.zeros(2)), opf.LBFGSB(), history=newer)
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(opf.OptiframeError, match="schema version 99.*newer optiframe"):
        opf.read_history(newer)


def test_resume_says_why_it_cannot(tmp_path):
    path = tmp_path / "done.sqlite"
    prob = opf.OptimizationProblem(rosenbrock, jnp.zeros(4))
    opf.solve(prob, opf.LBFGSB(), history=path)
    with pytest.raises(opf.OptiframeError, match="finished with Success: there is nothing"):
        opf.resume(path)
    path = tmp_path / "stopped.sqlite"
    opf.solve(prob, optax.adam(1e-2), maxiters=100, history=path,
              callback=lambda s, loss: s.iter == 10)
    db = sqlite3.connect(path)
    db.execute("UPDATE runs SET pickled=NULL")
    db.commit()
    db.close()
    with pytest.raises(opf.OptiframeError, match=r"pass them, opf.resume\(path, prob, alg\)"):
        opf.resume(path)
    sol = opf.resume(path, prob, optax.adam(1e-2))
    assert sol.stats.iterations == 90
    assert json.loads(sqlite3.connect(path).execute("SELECT keywords FROM runs").fetchone()[0])[
        "maxiters"] == 100
