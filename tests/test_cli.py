"""The command line end to end on sinusoid: train, checkpoint, resume, test CSV."""
import csv
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO_ROOT

SINE = ["--datasource=sinusoid", "--norm=None", "--update_batch_size=5", "--update_lr=0.01"]
EXP = "cls_5.mbs_25.ubs_5.numstep1.updatelr0.01nonorm"


def run_main(*args, check=True, timeout=300):
    proc = subprocess.run([sys.executable, "main.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"main.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _state(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("sine")
    out = run_main(*SINE, f"--logdir={logdir}", "--metatrain_iterations=301", "--save_interval=100")
    return logdir, out


def test_training_writes_checkpoints_and_summaries(trained):
    logdir, out = trained
    exp = logdir / EXP
    assert "Done initializing, starting training." in out.stdout
    for itr in (100, 200, 300):
        assert (exp / f"model{itr}.index").exists()
    state = tf.train.get_checkpoint_state(str(exp))
    assert os.path.basename(state.model_checkpoint_path) == "model300"
    tags = set()
    for f in exp.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            tags.update(v.tag for v in event.summary.value)
    # The original's tags, for every step up to test_num_updates (5 for sinusoid training).
    assert {"metatrain_Pre-update loss", "metatrain_Post-update loss, step 1",
            "metatrain_Post-update loss, step 5"} <= tags
    full = _state(str(exp / "model300"))
    assert int(full["iteration/.ATTRIBUTES/VARIABLE_VALUE"]) == 301
    assert int(full["model/metatrain_optimizer/step/.ATTRIBUTES/VARIABLE_VALUE"]) == 301
    assert any("metatrain_optimizer/m" in k for k in full)  # Adam slots are saved


def test_test_mode_writes_the_original_csv_and_pickle(trained):
    logdir, _ = trained
    out = run_main(*SINE, f"--logdir={logdir}", "--metatrain_iterations=301", "--train=False")
    assert "Restoring model weights from" in out.stdout and "model300" in out.stdout
    stem = logdir / EXP / "test_ubs5_stepsize0.01"
    with open(f"{stem}.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == [f"update{i}" for i in range(11)]
    assert len(rows) == 4 and all(len(r) == 11 for r in rows)
    means, stds, ci95 = (np.array(r, dtype=float) for r in rows[1:])
    with open(f"{stem}.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["mses"].shape == (600, 11)
    np.testing.assert_allclose(means, data["mses"].mean(0), rtol=1e-6)
    np.testing.assert_allclose(stds, data["mses"].std(0), rtol=1e-6)
    np.testing.assert_allclose(ci95, 1.96 * stds / np.sqrt(600), rtol=1e-6)
    # The fixed test tasks: the same checkpoint tested twice gives the same numbers.
    again = run_main(*SINE, f"--logdir={logdir}", "--metatrain_iterations=301", "--train=False",
                     "--test_iter=300")
    assert again.returncode == 0
    with open(f"{stem}.csv") as f:
        assert list(csv.reader(f)) == rows


def test_resume_continues_exactly(tmp_path, trained):
    a, b = tmp_path / "a", trained[0]  # b: the same 301 iterations without a stop
    run_main(*SINE, f"--logdir={a}", "--metatrain_iterations=201", "--save_interval=100")
    resumed = run_main(*SINE, f"--logdir={a}", "--metatrain_iterations=301", "--save_interval=100")
    assert "resuming at iteration 201" in resumed.stdout
    sa, sb = _state(str(a / EXP / "model300")), _state(str(b / EXP / "model300"))
    assert sa.keys() == sb.keys()
    for k in sa:  # weights, Adam slots and step, iteration, sampler state
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    # A different seed is a different run.
    c = tmp_path / "c"
    run_main(*SINE, f"--logdir={c}", "--metatrain_iterations=101", "--save_interval=100", "--seed=3")
    sc = _state(str(c / EXP / "model100"))
    sa100 = _state(str(a / EXP / "model100"))
    assert not np.array_equal(sc["model/weights/w1/.ATTRIBUTES/VARIABLE_VALUE"],
                              sa100["model/weights/w1/.ATTRIBUTES/VARIABLE_VALUE"])


def test_baselines_run_and_test(tmp_path):
    common = ["--datasource=sinusoid", "--norm=None", "--update_batch_size=5", f"--logdir={tmp_path}",
              "--pretrain_iterations=101", "--metatrain_iterations=0", "--num_test_tasks=20"]
    run_main(*common, "--baseline=oracle")
    run_main(*common, "--baseline=oracle", "--train=False")
    assert (tmp_path / "cls_5.mbs_25.ubs_5.numstep1.updatelr0.001oraclenonorm" / "test_ubs5_stepsize0.001.csv").exists()
    run_main(*common)
    run_main(*common, "--train=False")
    assert (tmp_path / "cls_5.mbs_25.ubs_5.numstep1.updatelr0.001nonormpretrain" / "test_ubs5_stepsize0.001.csv").exists()


def test_usage_errors_are_one_line_without_traceback(tmp_path):
    out = run_main("--datasource=sinusoid", "--baseline=oracle", "--datasource=omniglot",
                   f"--logdir={tmp_path}", check=False)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "--baseline=oracle" in out.stderr
    out = run_main(*SINE, f"--logdir={tmp_path}", "--train=False", check=False)
    assert out.returncode == 2 and "no checkpoint" in out.stderr and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []
