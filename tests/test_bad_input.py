"""Bad flags and broken data folders: one clear line, exit 2, no traceback, nothing lost."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

SINE = ["--datasource=sinusoid", "--norm=None", "--update_batch_size=5", "--update_lr=0.01"]
OMNI = ["--datasource=omniglot", "--meta_batch_size=4", "--update_batch_size=1", "--update_lr=0.4",
        "--metatrain_iterations=2"]


def _snapshot(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def logdir(sine_short_run, tmp_path_factory):
    """A log folder that already holds a finished sinusoid run (must survive every error)."""
    return pathlib.Path(shutil.copytree(sine_short_run, tmp_path_factory.mktemp("logs") / "run"))


def _expect_error(logdir, args, *needles):
    before = _snapshot(logdir)
    proc = subprocess.run([sys.executable, "main.py", f"--logdir={logdir}", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert _snapshot(logdir) == before  # nothing removed or overwritten
    return errors[0]


@pytest.mark.parametrize("args,needles", [
    (SINE + ["--max_pool=True"], ["--max_pool", "sinusoid"]),
    (SINE + ["--conv=False"], ["--conv"]),
    (SINE + ["--num_filters=32"], ["--num_filters"]),
    (SINE + ["--baseline=oracle", "--datasource=omniglot"], ["--baseline=oracle"]),
    (SINE + ["--baseline=task_id"], ["--baseline"]),
    (SINE + ["--norm=group_norm"], ["--norm"]),
    (SINE + ["--meta_batch_size=0"], ["--meta_batch_size"]),
    (SINE + ["--metatrain_iterations=0"], ["nothing to train"]),
    (SINE + ["--cpu_devices=2"], ["--distribution"]),
    (SINE + ["--meta_batch_size=25", "--distribution=mirrored", "--cpu_devices=2"], ["--meta_batch_size=25"]),
    (SINE + ["--distribution=multi_worker"], ["TF_CONFIG"]),
    (SINE + ["--train=False", "--test_iter=12345", "--metatrain_iterations=101"], ["model12345"]),
    (SINE + ["stray_argument"], ["stray_argument"]),
])
def test_bad_flags(logdir, args, needles):
    _expect_error(logdir, args, *needles)


def test_bad_flags_are_reported_before_tensorflow_loads():
    """The config's checks (the flags above but a strategy's and a checkpoint's) need no TensorFlow, so a
    bad flag is an error in about a second, not after TensorFlow's few seconds of import."""
    code = ("import runpy, sys\n"
            "sys.argv = ['main.py', '--datasource=sinusoid', '--norm=None', '--method=reptile',"
            " '--stop_grad=True']\n"  # wrong in the last check, past the engines' and methods' names
            "try:\n    runpy.run_path('main.py', run_name='__main__')\n"
            "except SystemExit as e:\n    print('exit', e.code)\n"
            "print('tensorflow loaded:', 'tensorflow' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert "exit 2" in proc.stdout and "error: --stop_grad do not apply to --method=reptile" in proc.stderr, \
        proc.stdout + proc.stderr
    assert "tensorflow loaded: False" in proc.stdout


def test_checkpoint_of_another_architecture(logdir):
    """A folder holding another network's checkpoints: resume and test both refuse."""
    src = logdir / "cls_5.mbs_25.ubs_5.numstep1.updatelr0.01nonorm"
    dst = logdir / "cls_5.mbs_25.ubs_5.numstep1.updatelr0.01oraclenonorm"
    shutil.copytree(src, dst)
    oracle = SINE + ["--baseline=oracle", "--pretrain_iterations=200", "--metatrain_iterations=0"]
    msg = _expect_error(logdir, oracle, "does not fit", "--baseline")
    assert "model100" in msg
    _expect_error(logdir, oracle + ["--train=False"], "does not fit")


def test_logdir_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me")
    proc = subprocess.run([sys.executable, "main.py", *SINE, f"--logdir={f}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "is a file" in proc.stderr and "Traceback" not in proc.stderr
    assert f.read_text() == "keep me"


def test_missing_empty_and_wrong_data_folders(logdir, tmp_path, omniglot_data_dir):
    _expect_error(logdir, OMNI + [f"--data_dir={tmp_path / 'nowhere'}"], "prepare_omniglot.py")
    empty = tmp_path / "empty"
    (empty / "omniglot_resized").mkdir(parents=True)
    _expect_error(logdir, OMNI + [f"--data_dir={empty}"], "omniglot_resized")
    flat = tmp_path / "flat" / "omniglot_resized"
    flat.mkdir(parents=True)
    (flat / "0001_01.png").write_bytes(b"not really")
    _expect_error(logdir, OMNI + [f"--data_dir={flat.parent}"], "omniglot_resized")
    _expect_error(logdir, SINE[:0] + ["--datasource=miniimagenet", "--metatrain_iterations=2",
                                      f"--data_dir={tmp_path / 'nowhere'}"], "miniImagenet")
    # More classes than the meta-validation split (100 characters) holds.
    _expect_error(logdir, OMNI + [f"--data_dir={omniglot_data_dir}", "--num_classes=150"], "150")
