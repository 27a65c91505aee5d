"""The experiment registry, the results table, model selection and reproduce/run.py,
on the CSVs and checkpoints of short real sinusoid runs."""
import atexit
import csv
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from maml_tf.paper import experiments, results
from maml_tf.run.config import Config, UsageError
from maml_tf.paper.experiments import BY_NAME, EXPERIMENTS

REPO = pathlib.Path(__file__).resolve().parents[1]
SHORT_ITERATIONS = 300
SHORT_TEST_TASKS = 100
SINE_NAMES = [e.name for e in EXPERIMENTS if e.name.startswith("sinusoid-")]
# The short run of the issue (not one of the paper's configurations: meta-trained with K=5).
ISSUE_RUN = ["--datasource=sinusoid", "--metatrain_iterations=300", "--norm=None",
             "--update_batch_size=5", "--update_lr=0.01"]


def _quiet(*_):
    pass


@functools.lru_cache(maxsize=None)
def sinusoid_logroot():
    """A log root holding short real runs of every sinusoid experiment of the registry
    (budget layout: <root>/budget/sine, 300 iterations, 100 test tasks, no records),
    made once per test session (the figure tests use it too)."""
    from maml_tf.run import train
    root = tempfile.mkdtemp(prefix="maml_tf_sine_runs_")
    atexit.register(shutil.rmtree, root, True)
    trained = set()
    for name in SINE_NAMES:
        e = BY_NAME[name]
        kw = dict(budget=True, logroot=root,
                  extra=[(e.iterations_flag, SHORT_ITERATIONS), ("num_test_tasks", SHORT_TEST_TASKS)])
        train_cfg = e.config(test=False, **kw)
        if train_cfg.exp_dir not in trained:
            train.train(train_cfg, out=_quiet)
            trained.add(train_cfg.exp_dir)
        train.test(e.config(test=True, **kw), out=_quiet)
    return root


@functools.lru_cache(maxsize=None)
def issue_run_logdir():
    """The issue's short run through main.py: train 300 iterations, then --train=False."""
    root = tempfile.mkdtemp(prefix="maml_tf_issue_run_")
    atexit.register(shutil.rmtree, root, True)
    for extra in ([], ["--train=False"]):
        r = subprocess.run([sys.executable, str(REPO / "main.py"), *ISSUE_RUN, f"--logdir={root}", *extra],
                           cwd=str(REPO), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    return root


# ----------------------------------------------------------------------------- registry
def test_registry_configs_are_valid_and_distinct():
    seen = {}
    for e in EXPERIMENTS:
        for budget in (False, True):
            train_cfg = e.config(budget=budget, test=False)
            test_cfg = e.config(budget=budget, test=True)
            assert test_cfg.exp_dir == train_cfg.exp_dir, e.name  # the test finds the trained run
            key = (test_cfg.exp_dir, test_cfg.test_csv_stem)
            assert seen.get(key, e.name) == e.name, f"{e.name} and {seen[key]} write the same CSV"
            seen[key] = e.name
            if e.trains:
                want = e.budget_iterations if budget else e.full_iterations
                assert train_cfg.total_iterations == want
        assert all(c <= e.config().eval_num_updates for c in e.columns)


def test_registry_paper_numbers_and_columns():
    table = {"omniglot-5way-1shot": (3, 98.7, 0.4), "omniglot-5way-5shot": (3, 99.9, 0.1),
             "omniglot-20way-1shot": (5, 95.8, 0.3), "omniglot-20way-5shot": (5, 98.9, 0.2),
             "miniimagenet-5way-1shot": (10, 48.70, 1.84), "miniimagenet-5way-5shot": (10, 63.11, 0.92),
             "miniimagenet-5way-1shot-firstorder": (10, 48.07, 1.75),
             "miniimagenet-5way-5shot-firstorder": (10, 63.15, 0.91)}
    for name, (col, mean, ci) in table.items():
        e = BY_NAME[name]
        assert e.columns == (col,)
        assert e.paper[col] == pytest.approx((mean / 100, ci / 100))
    for name in SINE_NAMES:
        assert BY_NAME[name].columns == (1, 5, 10) and BY_NAME[name].metric == "mse"


def test_registry_commands_are_the_readme_ones():
    cmd = experiments.shell_join(BY_NAME["omniglot-20way-1shot"].command())
    assert cmd == ("python main.py --datasource=omniglot --metatrain_iterations=60000 --meta_batch_size=16 "
                   "--update_batch_size=1 --num_classes=20 --update_lr=0.1 --num_updates=5 "
                   "--logdir=logs/omniglot20way")
    mini = BY_NAME["miniimagenet-5way-1shot"].config()
    assert (mini.meta_batch_size, mini.num_updates, mini.update_lr, mini.num_filters, mini.max_pool,
            mini.num_test_tasks, mini.test_set, mini.train) == (4, 5, 0.01, 32, True, 600, True, False)
    assert BY_NAME["miniimagenet-5way-1shot-firstorder"].config().stop_grad
    assert not BY_NAME["omniglot-5way-1shot-noconv"].config().conv
    budget = BY_NAME["sinusoid-pretrained-k5"].config(budget=True)
    assert budget.pretrain_iterations == 5000 and budget.logdir == os.path.join("logs", "budget", "sine")
    assert budget.update_lr == 0.01 and budget.update_batch_size == 5


def test_parse_flags_like_absl():
    values, rest = experiments.parse_flags(["--max_pool", "--noconv", "--num_filters=32", "--train=false",
                                            "--baseline=oracle", "--update_lr=0.4", "--column=3"])
    assert values == {"max_pool": True, "conv": False, "num_filters": 32, "train": False,
                      "baseline": "oracle", "update_lr": 0.4}
    assert rest == ["--column=3"]
    with pytest.raises(UsageError, match="--num_filters=x"):
        experiments.parse_flags(["--num_filters=x"])
    with pytest.raises(UsageError, match="--update_lr needs a value"):
        experiments.parse_flags(["--update_lr"])


# ----------------------------------------------------------------------------- results table
def test_read_test_csv_and_errors(tmp_path):
    p = tmp_path / "test_ubs5_stepsize0.01.csv"
    p.write_text("update0,update1\n1.5,0.5\n2.0,1.0\n0.16,0.08\n")
    d = results.read_test_csv(str(p))
    np.testing.assert_allclose(d.means, [1.5, 0.5])
    np.testing.assert_allclose(d.ci95, [0.16, 0.08])
    assert d.num_steps == 1
    bad = tmp_path / "test_ubs1_stepsize0.1.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(results.ResultsError, match="not a test CSV"):
        results.read_test_csv(str(bad))
    assert results.main(["--logdir", str(tmp_path / "nowhere")]) == 2
    warnings = []
    rows = results.collect(str(tmp_path), warn=warnings.append)  # the bad file is skipped, not fatal
    assert [os.path.basename(r.csv.path) for r in rows] == ["test_ubs5_stepsize0.01.csv"]
    assert len(warnings) == 1 and "test_ubs1_stepsize0.1.csv is not a test CSV" in warnings[0]


def test_results_table_from_short_sinusoid_runs(capsys):
    root = sinusoid_logroot()
    rows = results.collect(root)
    assert [r.experiment.name for r in rows] == SINE_NAMES
    for r in rows:
        assert r.variant == "budget" and r.iterations == SHORT_ITERATIONS
        assert r.tested.startswith(f"model{SHORT_ITERATIONS - 1}")
    assert results.main(["--logdir", root]) == 0
    text = capsys.readouterr().out
    assert "| Experiment | 0 steps | 1 step | 5 steps | 10 steps |" in text
    # Every number in the table is the CSV's.
    for name in SINE_NAMES:
        cfg = BY_NAME[name].config(budget=True, logroot=root)
        d = results.read_test_csv(cfg.test_csv_path)
        line = next(l for l in text.splitlines() if l.startswith(f"| {BY_NAME[name].title} |"))
        for col in (0, 1, 5, 10):
            assert f"{d.means[col]:.3f} ± {d.ci95[col]:.3f}" in line
        assert "**budget** (300 of 70,000 itr)" in line


def test_results_table_for_the_issue_run_is_listed_as_other(capsys):
    root = issue_run_logdir()
    rows = results.collect(root)
    assert len(rows) == 1 and rows[0].experiment is None
    assert results.main(["--logdir", root]) == 0
    text = capsys.readouterr().out
    assert "Other test results" in text and "test_ubs5_stepsize0.01.csv" in text
    d = rows[0].csv
    assert d.num_steps == 10 and np.all(d.means > 0)


def _fake_run(root, name, iterations, budget, values, record=None):
    """A fake run folder: an empty model<itr>.index and a test CSV with ``values`` (means)."""
    e = BY_NAME[name]
    cfg = e.config(budget=budget, logroot=str(root))
    os.makedirs(cfg.exp_dir, exist_ok=True)
    if iterations:
        open(os.path.join(cfg.exp_dir, f"model{iterations - 1}.index"), "w").close()
    path = cfg.test_csv_path
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"update{i}" for i in range(len(values))])
        w.writerow(values)
        w.writerow([0.1] * len(values))
        w.writerow([0.004] * len(values))
    if record:
        results.write_manifest(path, record)
    return path


def test_results_table_classification_full_budget_and_released(tmp_path):
    accs = [0.2, 0.9, 0.95, 0.97, 0.98, 0.985, 0.986, 0.987, 0.988, 0.989, 0.99]
    _fake_run(tmp_path, "omniglot-5way-1shot", 60000, False, accs)
    _fake_run(tmp_path, "omniglot-5way-1shot", 2000, True, accs)
    _fake_run(tmp_path, "omniglot-5way-1shot-noconv", 60000, False, accs)  # same folder name, other group
    _fake_run(tmp_path, "miniimagenet-5way-1shot-released", 0, False, accs,
              record={"experiment": "miniimagenet-5way-1shot-released", "variant": "full",
                      "iterations": 59001, "tested_checkpoint": "model59000 (--init_checkpoint)"})
    rows = results.collect(str(tmp_path))
    names = [(r.experiment.name, r.variant) for r in rows]
    assert names == [("omniglot-5way-1shot", "full"), ("omniglot-5way-1shot", "budget"),
                     ("omniglot-5way-1shot-noconv", "full"), ("miniimagenet-5way-1shot-released", "full")]
    text = results.markdown(rows, str(tmp_path))
    lines = [l for l in text.splitlines() if l.startswith("| Omniglot") or l.startswith("| MiniImagenet")]
    assert lines[0].startswith("| Omniglot 5-way 1-shot | 3 steps | 97.00 ± 0.40 | 98.7 ± 0.4 | full (60,000 itr)")
    assert "**budget** (2,000 of 60,000 itr)" in lines[1]
    assert lines[2].startswith("| Omniglot 5-way 1-shot, MAML no conv | 3 steps | 97.00 ± 0.40 | 89.7 ± 1.1 |")
    assert "| 10 steps | 99.00 ± 0.40 | 48.70 ± 1.84 | full (59,001 itr) | model59000 (--init_checkpoint) |" in lines[3]
    # a full-length command stopped part way (reproduce/run.py --resume) is not called full
    stopped = results.ResultRow(rows[0].csv, rows[0].experiment, "full", 22868, "model22867", None)
    assert "**short of full length** (22,868 of 60,000 itr)" in results.markdown([stopped], str(tmp_path))


# ----------------------------------------------------------------------------- model selection
def test_select_checkpoint_names_the_best_iteration(tmp_path, capsys):
    from maml_tf.paper import select_checkpoint
    from maml_tf.run import train
    logdir = str(tmp_path / "logs")
    flags = ["--datasource=sinusoid", "--metatrain_iterations=250", "--norm=None", "--update_batch_size=5",
             "--update_lr=0.01", "--save_interval=100", f"--logdir={logdir}"]
    values, _ = experiments.parse_flags(flags)
    train.train(experiments.config_from_flags(values), out=_quiet)
    assert select_checkpoint.main(flags + ["--num_tasks=20", "--column=1"]) == 0
    out = capsys.readouterr().out
    with open(os.path.join(Config(**{**values, "train": False}).exp_dir, "model_selection.json")) as f:
        rec = json.load(f)
    assert sorted(rec["results"]) == ["model100", "model200", "model249"]
    best = min(rec["results"], key=lambda k: rec["results"][k][0])
    assert rec["best_iteration"] == int(best[len("model"):])
    assert f"--test_iter={rec['best_iteration']}" in out and rec["column"] == 1 and rec["split"] == "val"
    # A run that does not exist, and a bad option: one-line errors.
    assert select_checkpoint.main(flags[:-1] + [f"--logdir={tmp_path / 'none'}"]) == 2
    assert select_checkpoint.main(flags + ["--columns=1"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint model<itr>" in err and "unknown argument --columns=1" in err


# ----------------------------------------------------------------------------- reproduce/run.py
def _run_py(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "reproduce" / "run.py"), *args], cwd=str(cwd),
                          capture_output=True, text=True, timeout=900)


def _load_run_py():
    import importlib.util
    spec = importlib.util.spec_from_file_location("_reproduce_run", REPO / "reproduce" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_py_list_show_and_markdown_is_current(capsys):
    run_py = _load_run_py()
    assert run_py.main(["--list"]) == 0
    out = capsys.readouterr().out
    for e in EXPERIMENTS:
        assert e.name in out
    assert run_py.main(["--show", "miniimagenet-5way-1shot", "--budget"]) == 0
    out = capsys.readouterr().out
    assert "--metatrain_iterations=300" in out and "--logdir=logs/budget/miniimagenet1shot" in out
    assert run_py.main(["--markdown"]) == 0
    out = capsys.readouterr().out
    with open(REPO / "reproduce" / "README.md") as f:
        assert f.read() == out, "reproduce/README.md is stale: python reproduce/run.py --markdown > reproduce/README.md"
    assert run_py.main(["--experiment", "no-such-thing"]) == 2
    assert "no experiment matches" in capsys.readouterr().err
    assert run_py.main(["--experiment", "sinusoid-maml-k5", "--", "--no_such_flag=1"]) == 2
    assert "not main.py flags" in capsys.readouterr().err


# One short run of reproduce/run.py, trained, selected, tested and saved, shared by the tests
# below (each works on a copy): 200 iterations, checkpoints model100 and model199.
SELECTED_RUN = ["--experiment", "sinusoid-maml-k5", "--iterations", "200", "--num_test_tasks", "30", "--select"]


@functools.lru_cache(maxsize=None)
def selected_run():
    """(root, run.py's stdout): ``root/logs`` the log root, ``root/saved`` the --resume folder."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="maml_tf_run_py_"))
    atexit.register(shutil.rmtree, str(root), True)
    r = _run_py(*SELECTED_RUN, "--resume", str(root / "saved"), "--logroot", str(root / "logs"), "--",
                "--save_interval=100", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, r.stdout


def _selected_run_copy(tmp_path):
    root, out = selected_run()
    for name in ("logs", "saved"):
        shutil.copytree(root / name, tmp_path / name)
    return tmp_path / "logs", tmp_path / "saved", out


def test_run_py_trains_selects_tests_and_records(tmp_path):
    logroot, saved_root, out = _selected_run_copy(tmp_path)
    cfg = BY_NAME["sinusoid-maml-k5"].config(budget=True, logroot=str(logroot),
                                             extra=[("metatrain_iterations", 200)])
    csv_path = cfg.test_csv_path
    with open(results.manifest_path(csv_path)) as f:
        rec = json.load(f)
    with open(os.path.join(cfg.exp_dir, "model_selection.json")) as f:
        best = json.load(f)["best_iteration"]
    assert rec["experiment"] == "sinusoid-maml-k5" and rec["variant"] == "budget"
    assert rec["iterations"] == 200 and rec["num_test_tasks"] == 30
    assert rec["tested_checkpoint"] == f"model{best} (selected)"
    assert f"--test_iter={best}" in rec["test_command"]
    assert rec["train_command"].startswith("python main.py --datasource=sinusoid --metatrain_iterations=200")
    assert "| Sinusoid, MAML, K=5 |" in out and "**budget** (200 of 70,000 itr)" in out


def test_run_py_skip_test_trains_only_and_succeeds(tmp_path):
    """--skip_test: the run is trained and nothing is tested or recorded; that is success,
    not an error about a test CSV that nobody asked for, and an earlier test's CSV is not
    recorded as a test of the newest checkpoint."""
    logroot = tmp_path / "logs"
    r = _run_py("--experiment", "sinusoid-maml-k5", "--iterations", "20", "--skip_test",
                "--logroot", str(logroot), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trained, not tested (--skip_test)" in r.stdout and "was not written" not in r.stderr
    cfg = BY_NAME["sinusoid-maml-k5"].config(budget=True, logroot=str(logroot),
                                             extra=[("metatrain_iterations", 20)])
    assert results.latest_checkpoint_iteration(cfg.exp_dir) == 19
    assert not os.path.exists(cfg.test_csv_path) and not os.path.exists(results.manifest_path(cfg.test_csv_path))
    pathlib.Path(cfg.test_csv_path).write_text("an earlier test's CSV\n")
    r = _run_py("--experiment", "sinusoid-maml-k5", "--iterations", "20", "--skip_test",
                "--logroot", str(logroot), cwd=tmp_path)
    assert r.returncode == 0 and "not tested (--skip_test)" in r.stdout, r.stderr[-3000:]
    assert not os.path.exists(results.manifest_path(cfg.test_csv_path))


def test_run_py_train_stops_cleanly_on_time_or_signal():
    """_run: --stop_after sends main.py's stop signal, and the child's 128 + SIGTERM exit
    is a clean stop; a child that ends by itself is not 'stopped'."""
    import signal as sig
    run_py = _load_run_py()
    child = [sys.executable, "-c",
             "import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(128 + signal.SIGTERM))\n"
             "time.sleep(60)"]
    rc, wall, stopped = run_py._run(child, False, stop_after=1.0)
    assert (rc, stopped) == (0, True) and 1.0 <= wall < 30
    run_py.STOPPED.clear()
    rc, _, stopped = run_py._run([sys.executable, "-c", "pass"], False, stop_after=30)
    assert (rc, stopped) == (0, False)
    rc, _, stopped = run_py._run([sys.executable, "-c", "import sys; sys.exit(3)"], False)
    assert (rc, stopped) == (3, False)  # a failure stays a failure
    assert sig.getsignal(sig.SIGTERM) is sig.SIG_DFL  # the handlers are put back


def test_run_py_resume_saves_the_state_and_the_same_command_continues(tmp_path):
    """A stretch stopped by SIGTERM saves its newest full state into the resume folder and is
    tested short of its length; the same command, with the log folder gone, restores that
    state, trains to the end, selects and tests."""
    import signal as sig
    import time
    logroot, saved_root = tmp_path / "logs", tmp_path / "saved"
    args = ["--experiment", "sinusoid-maml-k5", "--iterations", "20000", "--num_test_tasks", "30",
            "--select", "--resume", str(saved_root), "--logroot", str(logroot), "--", "--save_interval=1000"]
    cfg = BY_NAME["sinusoid-maml-k5"].config(budget=True, logroot=str(logroot), test=False,
                                             extra=[("metatrain_iterations", 20000), ("save_interval", 1000)])
    test_csv = BY_NAME["sinusoid-maml-k5"].config(budget=True, logroot=str(logroot), test=True,
                                                  extra=[("metatrain_iterations", 20000)]).test_csv_path
    saved = saved_root / os.path.relpath(cfg.exp_dir, str(logroot))
    queued = ["--experiment", "sinusoid-maml-k10"]  # a stop holds for the whole command
    p = subprocess.Popen([sys.executable, str(REPO / "reproduce" / "run.py"), *args[:2], *queued, *args[2:]],
                         cwd=str(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while results.latest_checkpoint_iteration(cfg.exp_dir) is None and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(sig.SIGTERM)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    stopped_at = results.latest_checkpoint_iteration(cfg.exp_dir)
    assert stopped_at + 1 < 20000, "the run finished before the signal: nothing was tested"
    assert f"stopped at iteration {stopped_at + 1:,} of 20,000" in out
    assert "no model selection" in out and "scoring this stretch's checkpoints" in out
    # the stretch's checkpoints scored on the validation split, the scores saved with the state
    with open(saved / "model_selection.json") as f:
        first = json.load(f)
    on_disk = sorted(f"model{i}" for i in results.checkpoint_iterations(cfg.exp_dir))
    assert sorted(first["results"]) == on_disk and len(on_disk) >= 2
    first_best = first["best_iteration"]
    assert "=== sinusoid-maml-k10" not in out
    with open(results.manifest_path(test_csv)) as f:
        rec = json.load(f)
    assert rec["tested_checkpoint"] == f"model{stopped_at}" and rec["iterations"] == stopped_at + 1
    # the saved state: that checkpoint, named by its index, the best-scored one's files, the summaries
    assert results.latest_checkpoint_iteration(str(saved)) == stopped_at
    assert sorted(f for f in os.listdir(saved) if f.startswith("model") and "selection" not in f) == sorted(
        f for f in os.listdir(cfg.exp_dir) if f.startswith((f"model{stopped_at}.", f"model{first_best}.")))
    assert any(f.startswith("events.out.tfevents.") for f in os.listdir(saved))
    shutil.rmtree(logroot)  # another machine: only the saved state travels
    r = _run_py(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"restored model{stopped_at}" in r.stdout and f"resuming at iteration {stopped_at + 1}" in r.stdout
    with open(os.path.join(cfg.exp_dir, "model_selection.json")) as f:
        final = json.load(f)
    best = final["best_iteration"]
    # the selection saw every saved iteration: the first stretch's scored before (their files gone)
    assert set(first["results"]) < set(final["results"])
    assert all(final["results"][k] == v for k, v in first["results"].items())
    assert r.stdout.count("(scored before)") == len(first["results"])
    assert {f"model{i}" for i in results.checkpoint_iterations(cfg.exp_dir)} <= set(final["results"])
    with open(results.manifest_path(test_csv)) as f:
        rec = json.load(f)
    assert rec["iterations"] == 20000 and rec["tested_checkpoint"] == f"model{best} (selected)"
    assert os.path.exists(os.path.join(cfg.exp_dir, f"model{best}.index"))
    assert results.latest_checkpoint_iteration(str(saved)) == 19999
    assert {f for f in os.listdir(saved) if f.endswith(".index")} == {"model19999.index", f"model{first_best}.index"}
    # Done (full length, selected, tested): the same command skips it and says so.
    r = _run_py(*args, cwd=tmp_path)
    assert r.returncode == 0 and "done (20,000 iterations" in r.stdout and "skipped" in r.stdout
    assert "$ " not in r.stdout  # nothing ran


def _fake_state(folder, itr, named=True):
    folder.mkdir(exist_ok=True)
    (folder / f"model{itr}.data-00000-of-00001").write_text(f"weights {itr}")
    (folder / f"model{itr}.index").write_text(f"index {itr}")
    if named:
        (folder / "checkpoint").write_text(f'model_checkpoint_path: "model{itr}"\n')


def test_run_py_resume_never_moves_a_state_backwards(tmp_path):
    run_py = _load_run_py()
    saved, exp_dir = tmp_path / "saved", tmp_path / "run"
    _fake_state(saved, 5)
    _fake_state(exp_dir, 9)
    assert run_py.restore_state(str(saved), str(exp_dir)) == 9  # the log folder is further
    assert not (exp_dir / "model5.index").exists()
    assert run_py.save_state(str(exp_dir), str(saved)) == 9
    assert sorted(os.listdir(saved)) == ["checkpoint", "model9.data-00000-of-00001", "model9.index"]
    # A log folder behind the saved state (a stale logs/, --skip_train) leaves it alone.
    _fake_state(exp_dir, 3)
    assert run_py.save_state(str(exp_dir), str(saved)) is None
    assert run_py.indexed_iteration(str(saved)) == 9 and (saved / "model9.index").exists()
    assert run_py.save_state(str(tmp_path / "nothing"), str(saved)) is None
    # Only the index counts: files of a copy cut short before it are no state.
    cut = tmp_path / "cut"
    _fake_state(cut, 12, named=False)
    assert run_py.indexed_iteration(str(cut)) is None
    assert run_py.restore_state(str(saved), str(cut)) == 9 and run_py.indexed_iteration(str(cut)) == 9
    assert run_py.main(["--experiment", "sinusoid-maml-k5", "--stop_after", "0"]) == 2


def _fake_ledger(folder, best, scored):
    (folder / "model_selection.json").write_text(json.dumps(
        {"best_iteration": best, "column": 1, "metric": "accuracy", "split": "val", "num_tasks": 5, "seed": 2,
         "results": {f"model{i}": [0.5, 0.1] for i in scored}}))


def test_run_py_save_state_keeps_the_best_scored_checkpoint_beside_the_newest(tmp_path):
    """The saved state holds the newest checkpoint and the files of the one its scores name best
    (the selection at the run's end tests it wherever it was trained); a newer best replaces it,
    and a stretch saved without scores keeps the saved scores' best."""
    run_py = _load_run_py()
    saved, exp_dir = tmp_path / "saved", tmp_path / "run"
    for itr in (1000, 2000, 2500):
        _fake_state(exp_dir, itr)
    _fake_ledger(exp_dir, 1000, [1000, 2000, 2500])
    assert run_py.save_state(str(exp_dir), str(saved), ledger=True) == 2500
    models = lambda: sorted(f for f in os.listdir(saved) if f.startswith("model") and f.endswith(".index"))
    assert models() == ["model1000.index", "model2500.index"]
    assert run_py.ledger_best(str(saved)) == 1000 and run_py.indexed_iteration(str(saved)) == 2500
    # another machine: only saved travels; the next stretch saved without scores keeps model1000
    shutil.rmtree(exp_dir)
    assert run_py.restore_state(str(saved), str(exp_dir)) == 2500
    assert (exp_dir / "model1000.index").exists()  # restored with the state
    (exp_dir / "model1000.index").unlink()
    _fake_state(exp_dir, 3000)
    assert run_py.save_state(str(exp_dir), str(saved)) == 3000
    assert models() == ["model1000.index", "model3000.index"]
    # scores naming a newer best: the old best's files go, after the new ones are there
    _fake_state(exp_dir, 4000)
    _fake_ledger(exp_dir, 3000, [1000, 2000, 2500, 3000, 4000])
    assert run_py.save_state(str(exp_dir), str(saved), ledger=True) == 4000
    assert models() == ["model3000.index", "model4000.index"] and run_py.ledger_best(str(saved)) == 3000
    assert (saved / "model3000.data-00000-of-00001").exists()
    # scores of a state saved already (run.py --skip_train --select): they go in beside it
    _fake_ledger(exp_dir, 2500, [1000, 2000, 2500, 3000, 4000])
    assert run_py.save_state(str(exp_dir), str(saved)) is None  # nothing new without scores
    assert run_py.save_state(str(exp_dir), str(saved), ledger=True) == 4000
    assert models() == ["model2500.index", "model4000.index"] and run_py.ledger_best(str(saved)) == 2500


def test_run_py_selection_uses_saved_scores_only_with_the_same_settings(tmp_path, capsys):
    """The selection command adds the saved scores (--scored) where they were taken with its
    column, tasks, seed and split; otherwise it scores without them and says why in one line."""
    import types
    run_py = _load_run_py()
    e = BY_NAME["sinusoid-maml-k5"]
    args = types.SimpleNamespace(num_test_tasks=5)
    train_cmd = ["python", "main.py", "--datasource=sinusoid"]
    assert not any(a.startswith("--scored") for a in run_py._selection_cmd(e, train_cmd, args, str(tmp_path)))
    (tmp_path / "model_selection.json").write_text(json.dumps(
        {"best_iteration": 1000, "column": e.columns[-1], "metric": "mse", "split": "val", "num_tasks": 5,
         "seed": run_py.select_checkpoint.SEED, "results": {"model1000": [0.5, 0.1]}}))
    cmd = run_py._selection_cmd(e, train_cmd, args, str(tmp_path))
    assert cmd[-1] == f"--scored={tmp_path / 'model_selection.json'}" and "--num_tasks=5" in cmd
    assert cmd[:3] == [sys.executable, "-m", "maml_tf.paper.select_checkpoint"] and "scoring without" not in \
        capsys.readouterr().out
    args.num_test_tasks = 7
    cmd = run_py._selection_cmd(e, train_cmd, args, str(tmp_path))
    out = capsys.readouterr().out
    assert not any(a.startswith("--scored") for a in cmd) and "--num_tasks=7" in cmd
    assert "scoring without them" in out and "give --num_test_tasks=5 to use them" in out and out.count("\n") == 1
    assert "--select_seed" not in out  # run.py's own fix only, not select_checkpoint's flags
    (tmp_path / "model_selection.json").write_text("{not json")
    assert not any(a.startswith("--scored") for a in run_py._selection_cmd(e, train_cmd, args, str(tmp_path)))
    out = capsys.readouterr().out
    assert "not a readable model_selection.json" in out and "scoring without them" in out
    assert "--num_test_tasks" not in out and "--select_seed" not in out


def test_run_py_final_selection_tests_a_best_kept_only_in_the_saved_state(tmp_path):
    """At full length the selection adds the saved scores; where the best is a checkpoint of an
    earlier stretch whose files only the saved state holds, they are copied back and tested.
    Where neither folder has them: a one-line error, nothing tested."""
    logroot, saved_root, _ = _selected_run_copy(tmp_path)
    args = [*SELECTED_RUN, "--skip_train", "--resume", str(saved_root), "--logroot", str(logroot),
            "--", "--save_interval=100"]
    e = BY_NAME["sinusoid-maml-k5"]
    extra = [("metatrain_iterations", 200), ("save_interval", 100)]
    exp_dir = e.config(budget=True, logroot=str(logroot), test=False, extra=extra).exp_dir
    test_csv = e.config(budget=True, logroot=str(logroot), test=True, extra=extra[:1]).test_csv_path
    saved = saved_root / os.path.relpath(exp_dir, str(logroot))
    assert results.latest_checkpoint_iteration(str(saved)) == 199
    # An earlier stretch's model100, best by far, kept only in the saved state with its score.
    for name in os.listdir(exp_dir):
        if name.startswith("model100."):
            shutil.move(os.path.join(exp_dir, name), saved / name)
    (saved / "model_selection.json").write_text(json.dumps(
        {"best_iteration": 100, "column": e.columns[-1], "metric": "mse", "split": "val", "num_tasks": 30,
         "seed": 2, "results": {"model100": [1e-9, 1e-10]}}))
    os.remove(results.manifest_path(test_csv))  # not done: select and test again
    r = _run_py(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(scored before)" in r.stdout and os.path.exists(os.path.join(exp_dir, "model100.index"))
    with open(results.manifest_path(test_csv)) as f:
        assert json.load(f)["tested_checkpoint"] == "model100 (selected)"
    for folder in (exp_dir, saved):
        for name in os.listdir(folder):
            if name.startswith("model100."):
                os.remove(os.path.join(folder, name))
    os.remove(results.manifest_path(test_csv))
    r = _run_py(*args, cwd=tmp_path)
    assert r.returncode == 1 and "the selection names model100, whose files are neither in" in r.stderr
    assert not os.path.exists(results.manifest_path(test_csv))


def test_select_checkpoint_adds_scores_saved_before(tmp_path, capsys):
    """--scored: the checkpoints an earlier selection scored are not evaluated again and count
    though their files are gone; scores written with other settings are refused in one line."""
    from maml_tf.paper import select_checkpoint
    from maml_tf.run import train
    logdir = str(tmp_path / "logs")
    flags = ["--datasource=sinusoid", "--metatrain_iterations=150", "--norm=None", "--update_batch_size=5",
             "--update_lr=0.01", "--save_interval=100", f"--logdir={logdir}"]
    values, _ = experiments.parse_flags(flags)
    train.train(experiments.config_from_flags(values), out=_quiet)
    exp_dir = Config(**{**values, "train": False}).exp_dir
    ledger = tmp_path / "earlier.json"
    ledger.write_text(json.dumps({"best_iteration": 7, "column": 1, "metric": "mse", "split": "val",
                                  "num_tasks": 10, "seed": 2, "results": {"model7": [1e-6, 1e-7],
                                                                          "model100": [9.0, 0.5]}}))
    assert select_checkpoint.main(flags + ["--num_tasks=10", "--column=1", f"--scored={ledger}"]) == 0
    out = capsys.readouterr().out
    with open(os.path.join(exp_dir, "model_selection.json")) as f:
        rec = json.load(f)
    assert sorted(rec["results"]) == ["model100", "model149", "model7"]
    assert rec["results"]["model100"] == [9.0, 0.5]  # read, not evaluated again
    assert rec["results"]["model149"][0] > 1e-6 and rec["best_iteration"] == 7  # model7: no files, still best
    assert out.count("(scored before)") == 2
    assert select_checkpoint.main(flags + ["--num_tasks=20", "--column=1", f"--scored={ledger}"]) == 2
    assert select_checkpoint.main(flags + ["--num_tasks=10", f"--scored={tmp_path / 'none.json'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "scored with column, tasks, seed, split = (1, 10, 2, 'val'), not (1, 20, 2, 'val')" in err[0]
    assert "--num_tasks" in err[0] and "--select_seed" in err[0]
    assert "--scored=" in err[1] and "not a readable model_selection.json" in err[1]


def test_run_py_stop_reaches_the_commands_children_and_main_pys_own_stop_is_clean():
    import time
    run_py = _load_run_py()
    run_py.STOPPED.clear()
    # A command that started a child of its own (main.py's autotuning trials): both stop.
    pid_file = tempfile.NamedTemporaryFile(suffix=".pid", delete=False).name
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({pid_file!r}, 'w').write(str(p.pid))\n"
            "time.sleep(60)")
    t0 = time.time()
    rc, _, stopped = run_py._run([sys.executable, "-c", code], False, stop_after=3)
    assert stopped and rc == 0 and time.time() - t0 < 30  # killed by SIGTERM: a stop, not a failure
    grandchild = int(open(pid_file).read())
    for _ in range(50):  # reaped by init once it is gone
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the command's own child outlived the stop")
    assert run_py.STOPPED  # and it holds for the rest of the command
    rc, _, stopped = run_py._run([sys.executable, "-c", "pass"], False, since=0)
    assert stopped and rc == 0  # not started after the stop
    run_py.STOPPED.clear()
    # main.py signalled directly (not through this script) saves and exits 128 + 15: clean.
    rc, _, stopped = run_py._run([sys.executable, "-c", "import sys; sys.exit(143)"], False)
    assert (rc, stopped) == (0, True) and run_py.STOPPED
    run_py.STOPPED.clear()
