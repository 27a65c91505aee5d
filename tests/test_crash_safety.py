"""Killed runs resume without losing more than the iterations since the last checkpoint."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO_ROOT, SINE
EXP = "cls_5.mbs_25.ubs_5.numstep1.updatelr0.01nonorm"
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def _state(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _run(args, timeout=300):
    return subprocess.run([sys.executable, "main.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def _start(args):
    return subprocess.Popen([sys.executable, "main.py", *args], cwd=REPO_ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc, text, timeout=120):
    """Read the child's output until ``text`` appears; returns what was read."""
    seen, end = "", time.time() + timeout
    while time.time() < end:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never appeared:\n{seen}")


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
    total = ["--metatrain_iterations=3000"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _run(SINE + total + [f"--logdir={ref}"]).returncode == 0
    rng = random.Random(0)
    resumed_at = []
    for _ in range(3):  # bounded: three kills, then a run to the end
        proc = _start(SINE + total + [f"--logdir={killed}"])
        out = _wait_for(proc, "starting training")
        time.sleep(rng.uniform(0.3, 2.5))
        proc.send_signal(signal.SIGKILL)
        out += proc.communicate()[0]
        resumed_at += [line for line in out.splitlines() if "resuming at iteration" in line]
    final = _run(SINE + total + [f"--logdir={killed}"])
    assert final.returncode == 0, final.stdout + final.stderr
    resumed_at += [line for line in final.stdout.splitlines() if "resuming at iteration" in line]
    # Every resume starts right after a saved checkpoint (a multiple of --save_interval),
    # or at the end when a killed run had already finished.
    for line in resumed_at:
        itr = int(line.split("resuming at iteration")[1].split(")")[0])
        assert itr % 50 == 1 or itr == 3000, line
    a, b = _state(str(ref / EXP / "model2999")), _state(str(killed / EXP / "model2999"))
    assert a.keys() == b.keys()
    for k in a:  # weights, both Adam optimisers, iteration count, sampler state
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_half_written_checkpoint_is_never_taken(sine_short_copy):
    exp = sine_short_copy / EXP  # a finished 101-iteration run (SINE_SHORT: SINE, 101 iterations)
    # A crash in the middle of writing model150: files with the final names, no index entry.
    (exp / "model150.data-00000-of-00001").write_bytes(b"\0garbage")
    (exp / "model150.index").write_bytes(b"\0garbage")
    resumed = _run(SINE + ["--metatrain_iterations=201", f"--logdir={sine_short_copy}"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "model100 (resuming at iteration 101)" in resumed.stdout


def test_sigterm_saves_then_resumes(tmp_path):
    proc = _start(SINE + ["--metatrain_iterations=1000000", f"--logdir={tmp_path}"])
    _wait_for(proc, "starting training")
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    line = next(l for l in out.splitlines() if l.startswith("Stopped by signal"))
    itr = int(line.split("after iteration ")[1].split(";")[0])
    assert (tmp_path / EXP / f"model{itr}.index").exists()
    resumed = _run(SINE + [f"--metatrain_iterations={itr + 3}", f"--logdir={tmp_path}"])
    assert f"resuming at iteration {itr + 1}" in resumed.stdout


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(sine_short_copy):
    exp = sine_short_copy / EXP  # a finished 101-iteration run
    before = sorted(os.listdir(exp))
    good = _state(str(exp / "model100"))
    bad = _run(SINE + ["--metatrain_iterations=301", "--meta_lr=1e30", f"--logdir={sine_short_copy}"])
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert "non-finite" in bad.stderr and "iteration 10" in bad.stderr and "Traceback" not in bad.stderr
    assert "model100" in bad.stderr
    assert os.path.basename(tf.train.get_checkpoint_state(str(exp)).model_checkpoint_path) == "model100"
    after = _state(str(exp / "model100"))
    for k in good:
        np.testing.assert_array_equal(good[k], after[k])
    assert [f for f in sorted(os.listdir(exp)) if f.startswith("model")] == \
        [f for f in before if f.startswith("model")]


def test_fused_steps_equal_single_steps_across_a_resume(tmp_path, monkeypatch):
    """Sinusoid runs fuse the 99 steps between two summary iterations into one compiled
    call (--fuse_steps, default on).  The same run one step per call, and the fused run
    stopped at an iteration that is not a multiple of 100 and resumed (chunks realign to
    multiples of 100), end with the same checkpoint, bit for bit."""
    args = ["--datasource=sinusoid", "--norm=None", "--update_batch_size=5", "--update_lr=0.01"]
    runs = {"fused": [350], "single": [350], "resumed": [137, 350]}
    from maml_tf.methods.maml import MAML
    from maml_tf.run.config import config_from_flags
    from maml_tf.run.train import train
    calls = []
    fused = MAML.metatrain_steps
    monkeypatch.setattr(MAML, "metatrain_steps", lambda self, *a: calls.append(len(a[0])) or fused(self, *a))
    values = dict(a[2:].split("=") for a in args)
    train(config_from_flags({**values, "metatrain_iterations": 350, "logdir": str(tmp_path / "fused")}),
          out=lambda *a, **k: None)
    assert calls == [99, 99, 99], calls  # iterations 1-99, 101-199, 201-299 (300-349: a partial chunk)
    for name, lengths in runs.items():
        for n in lengths if name != "fused" else []:
            flags = [f"--metatrain_iterations={n}", f"--logdir={tmp_path / name}"]
            if name == "single":
                flags.append("--fuse_steps=False")
            r = _run(args + flags)
            assert r.returncode == 0, r.stdout + r.stderr
    states = {name: _state(str(tmp_path / name / EXP / "model349")) for name in runs}
    for name in ("single", "resumed"):
        assert states[name].keys() == states["fused"].keys()
        for k in states["fused"]:
            np.testing.assert_array_equal(states[name][k], states["fused"][k], err_msg=f"{name}: {k}")


@pytest.mark.parametrize("relative", [False, True], ids=["absolute_logdir", "relative_logdir"])
def test_checkpoint_index_holds_bare_names_that_tensorflow_resolves(tmp_path, monkeypatch, relative):
    """The index file ('checkpoint') names model<itr> relative to its own folder whether the
    log directory was given absolute or relative, so that tf.train.latest_checkpoint (what
    the original's test calls) finds the file, and the folder can be moved."""
    import tensorflow as tf
    from maml_tf.core.networks import build_network
    from maml_tf.methods.maml import MAML
    from maml_tf.run.checkpoints import CheckpointManager
    monkeypatch.chdir(tmp_path)
    folder = os.path.join("logs", "run") if relative else str(tmp_path / "logs" / "run")
    model = MAML(build_network("sinusoid", 1, 1, norm="None"), loss="mse", update_batch_size=2)
    manager = CheckpointManager(folder, model, max_to_keep=2)
    for itr in (3, 7, 9):
        manager.save(itr, itr + 1)
    index = (tmp_path / "logs" / "run" / "checkpoint").read_text()
    assert 'model_checkpoint_path: "model9"' in index and "model3" not in index and ".." not in index
    assert os.path.abspath(tf.train.latest_checkpoint(folder)) == str(tmp_path / "logs" / "run" / "model9")
    moved = tmp_path / "elsewhere"
    os.rename(tmp_path / "logs", moved)
    assert tf.train.latest_checkpoint(str(moved / "run")) == str(moved / "run" / "model9")
