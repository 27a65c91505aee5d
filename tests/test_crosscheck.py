"""maml-tf against the authors' own code (../shared/anchors/original), run live.

The short lockstep runs of ``python -m maml_tf.paper.crosscheck`` (the README has the long
ones); the original's data loader on our prepared Omniglot folder; and the TensorFlow
behaviour that decides how the original's batch norm is run.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO_ROOT, SHARED
from maml_tf.paper import crosscheck, original

ORIGINAL = SHARED / "anchors" / "original"
pytestmark = pytest.mark.skipif(not (ORIGINAL / "run_original.py").is_file(),
                                reason=f"the original code is not at {ORIGINAL}")


def run(config, iters, tmp_path, **kw):
    job = crosscheck.build_job(config, iters, **kw)
    rows, report, ok = crosscheck.run_crosscheck(job, str(ORIGINAL), str(tmp_path / "work"),
                                                 out=lambda *a: None)
    print(report)
    return {r["quantity"]: r for r in rows}, report, ok


@pytest.mark.parametrize("config,first_order", [("sinusoid", False), ("sinusoid", True),
                                                ("sinusoid-pretrain", False),
                                                ("sinusoid-oracle", False)])
def test_sinusoid_lockstep(config, first_order, tmp_path):
    """Sinusoid (fc 40-40, alpha 0.01) is stable in float32: 50 free-running iterations of
    the two codes agree to float32 accuracy, step by step and in the final weights."""
    rows, report, ok = run(config, 50, tmp_path, first_order=first_order, eval_tasks=10,
                           reference=False)
    assert ok, report
    assert rows["train pre-update loss"]["diff"] <= 1e-5
    assert rows["Adam update"]["diff"] <= 1e-6  # TF1's ApplyAdam arithmetic, to the bit
    assert rows["eval loss"]["diff"] <= 1e-5
    assert all(r["diff"] <= 1e-5 for q, r in rows.items() if q.startswith("final weights"))
    grads = [r for q, r in rows.items() if q.startswith("meta-gradient")]
    assert grads and all(r["diff"] <= 1e-4 for r in grads)


@pytest.mark.parametrize("first_order", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_omniglot_lockstep(first_order, omniglot_data_dir, tmp_path):
    """Omniglot 5-way 1-shot (strided conv, batch norm, alpha 0.4), a reduced meta-batch:
    every teacher-forced step and the evaluation agree; the free-running drift is the
    original's own drift from a 1-ulp-perturbed start."""
    rows, report, ok = run("omniglot5w1s", 20 if first_order else 50, tmp_path, first_order=first_order, eval_tasks=10,
                           data_dir=str(omniglot_data_dir),
                           overrides={"meta_batch_size": 8})
    assert ok, report
    assert rows["step pre-update loss"]["diff"] <= 1e-5
    assert rows["Adam update (biases before BN aside)"]["diff"] <= 1e-6
    # The median step agrees to float32 accuracy for every judged meta-gradient.
    assert rows["meta-gradient w5"]["first"] <= 1e-4


@pytest.mark.slow
def test_miniimagenet_lockstep(tmp_path):
    """miniImageNet 5-way 1-shot (max-pool, 32 filters, 5 inner steps, clipping), short.
    Its inner loop crosses ReLU / max-pool switching points often (about a quarter of the
    task-steps jump under float32 rounding), so the steps without a jump carry the check;
    six steps of two tasks leave some with near certainty (slow: pytest -m slow)."""
    rows, report, ok = run("mini5w1s", 6, tmp_path, eval_tasks=3,
                           overrides={"meta_batch_size": 2})
    assert ok, report
    assert rows["step pre-update loss"]["diff"] <= 1e-5


def test_lockstep_detects_a_wrong_meta_gradient(omniglot_data_dir, tmp_path):
    """Not blind: the original run with the shim's fused batch norm (whose second
    derivative TF 2 gets wrong inside the original's tf.map_fn) fails the gradient rows."""
    rows, report, ok = run("omniglot5w1s", 3, tmp_path, eval_tasks=2, reference=False,
                           data_dir=str(omniglot_data_dir), original_batch_norm="fused",
                           overrides={"meta_batch_size": 4})
    assert not ok
    assert rows["meta-gradient w5"]["ok"] is False and rows["meta-gradient w5"]["first"] > 1e-2
    assert rows["step pre-update loss"]["ok"]  # the forward pass is the same
    assert "differentiates the fused batch norm's gradient wrongly" in report


def test_tf_batch_norm_second_derivative_in_map_fn():
    """What the crosscheck's --original_batch_norm=unfused relies on: contrib's unfused batch
    norm (TF 1.0-1.2 moments) differentiates twice correctly inside a TF1 tf.map_fn, as the
    fused kernel does outside one.  (The fused kernel inside the map_fn is only reported.)"""
    code = textwrap.dedent("""
        import json, numpy as np
        from maml_tf.paper.crosscheck import fused_batch_norm_check, _norm_rel
        res = fused_batch_norm_check()
        truth = res["plain", "python"]
        print(json.dumps({f"{k[0]}/{k[1]}": [_norm_rel(v[0], truth[0]), _norm_rel(v[1], truth[1])]
                          for k, v in res.items()}))
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO_ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    err = json.loads(r.stdout.strip().splitlines()[-1])
    print(err)
    assert max(err["plain/map_fn"]) < 1e-5
    assert max(err["fused/python"]) < 1e-5


def test_original_loader_reads_our_prepared_omniglot(omniglot_data_dir):
    """The authors' DataGenerator runs on the folder data/prepare_omniglot.py makes, after
    maml-tf has loaded it (split lists and cache written beside it, not inside)."""
    from maml_tf.data import image_data
    image_data.make_sampler("omniglot", str(omniglot_data_dir), "train")
    assert (omniglot_data_dir / "omniglot_splits" / "train.txt").is_file()
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ORIGINAL)!r})
        import run_original
        tf = run_original.install_tf1_shim()
        sys.path.insert(0, os.path.join({str(ORIGINAL)!r}, "cbfinn_maml"))
        from tensorflow.python.platform import flags
        import main as original_main
        from data_generator import DataGenerator
        flags.FLAGS(["x", "--datasource=omniglot", "--meta_batch_size=2", "--update_batch_size=1"])
        os.chdir({str(omniglot_data_dir.parent)!r})   # the original reads ./data/omniglot_resized
        gen = DataGenerator(2, 2)
        images, labels = gen.make_data_tensor(train=False)
        with tf.Session() as sess:
            tf.train.start_queue_runners(sess=sess)
            x, y = sess.run([images, labels])
        print(len(gen.metatrain_character_folders), len(gen.metaval_character_folders), x.shape, y.shape)
    """)
    if omniglot_data_dir.name != "data":  # the original's fixed path ./data/omniglot_resized
        link = omniglot_data_dir.parent / "data"
        if not link.exists():
            link.symlink_to(omniglot_data_dir, target_is_directory=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "1100 100 (2, 10, 784) (2, 10, 5)"


def test_build_job_rules():
    job = crosscheck.build_job("sinusoid-oracle", 30)
    assert job["pretrain"] and job["flags"]["pretrain_iterations"] == 30
    assert job["flags"]["metatrain_iterations"] == 0
    job = crosscheck.build_job("omniglot5w1s", 250)
    assert len(job["sync"]) <= 101 and job["sync"][0] == 0 and job["sync"][-1] == 249
    with pytest.raises(crosscheck.UsageError, match="--config"):
        crosscheck.build_job("omniglot", 10)
    with pytest.raises(crosscheck.UsageError, match="not both"):
        crosscheck.build_job("sinusoid", 10, overrides={"pretrain_iterations": 5})


def test_moments_tf1_second_derivative():
    """TF 1.0-1.2's moments (shifted sufficient statistics) are exact to the second
    derivative; TF 1.3+'s stop_gradient form is not: checked against the closed form
    Hessian of the variance, 2/n (I - 11^T/n)."""
    import tensorflow as tf
    x = tf.constant(np.random.default_rng(0).standard_normal(7))
    u = tf.constant(np.random.default_rng(1).standard_normal(7))
    n = 7.0

    def hvp(var_fn):
        with tf.GradientTape() as t2:
            t2.watch(x)
            with tf.GradientTape() as t1:
                t1.watch(x)
                v = var_fn(x)
            g = t1.gradient(v, x)
            z = tf.reduce_sum(g * u)
        return t2.gradient(z, x).numpy()

    exact = 2 / n * (u.numpy() - u.numpy().mean())
    tf1 = hvp(lambda x: original.moments_tf1(tf.compat.v1, x, [0])[1])
    np.testing.assert_allclose(tf1, exact, rtol=1e-10, atol=1e-12)
    tf13 = hvp(lambda x: tf.nn.moments(x, [0])[1])
    assert np.abs(tf13 - exact).max() > 1e-3  # TF 1.3+: the -2/n^2 term is missing


def test_accuracy_verdict_follows_its_loss():
    """An accuracy difference where the same step's loss is off (a unit crossing its
    switching point) is the loss's consequence, judged in the loss's row; where the
    losses agree, an accuracy difference is judged on its own."""
    d_acc = np.array([0.0, 0.02, 0.02, 0.0])
    loss_off = np.array([0.0, 5e-2, 3e-2, 0.0])
    row = crosscheck._row("teacher-forced", "acc", "accuracy", d_acc, "1", 0.0,
                          ref=np.zeros(4), loss=loss_off)
    assert row["over"] == 2 and row["unexplained"] == 0 and row["ok"]
    row = crosscheck._row("teacher-forced", "acc", "accuracy", d_acc, "1", 0.0,
                          ref=np.zeros(4), loss=np.full(4, 1e-7))
    assert row["unexplained"] == 2 and not row["ok"]
    # per task and step (evaluation): the loss is matched element by element
    d2 = np.array([[0.0, 0.2], [0.2, 0.0]])
    row = crosscheck._row("evaluation", "acc", "accuracy", d2, "0,1", 0.0, ref=np.zeros((2, 2)),
                          loss=np.array([[0.0, 0.3], [0.0, 0.0]]))
    assert row["unexplained"] == 1
    # a step where a task's loss jumped is judged in the row of jumps, not in this one
    row = crosscheck._row("teacher-forced", "g", "gradient", np.array([1e-6, 0.3, 2e-6, 0.2]), "1", 1e-6,
                          ref=np.full(4, 1e-7), jump=np.array([False, True, False, False]))
    assert row["over"] == 2 and row["unexplained"] == 1
