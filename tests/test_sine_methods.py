"""reproduce/sine_methods.py: every run is a valid main.py command whose test restores the run it
trained, seeds never share a folder, and the table reads what hand-made test CSVs say."""
import csv
import os
import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "reproduce"))
import sine_methods  # noqa: E402

from maml_tf.run.config import config_from_flags  # noqa: E402

RUNS = [(row, k) for row in sine_methods.ROWS
        for k in sine_methods.shots_of(row, (5, 10, 20))]


@pytest.mark.parametrize("row,k", RUNS)
def test_run_trains_and_tests_the_same_model(row, k, tmp_path):
    values = sine_methods.run_flags(row, k, 0, str(tmp_path))
    train = config_from_flags(values)
    test = config_from_flags({**values, "train": False})
    assert train.train and not test.train
    assert test.exp_dir == train.exp_dir
    assert test.update_batch_size == train.update_batch_size == k  # K-shot trained, K-shot tested
    assert sine_methods.ROWS[row][2] <= test.eval_num_updates  # the column the CSV will have
    other = config_from_flags(sine_methods.run_flags(row, k, 1, str(tmp_path)))
    assert other.exp_dir != train.exp_dir and other.seed == 1


def test_settings_are_the_papers():
    maml = config_from_flags(sine_methods.run_flags("maml", 10, 0, "/tmp/x"))
    metasgd = config_from_flags(sine_methods.run_flags("metasgd", 10, 0, "/tmp/x"))
    assert (maml.method, metasgd.method) == ("maml", "metasgd")
    # the same protocol for both, apart from the method
    for name in ("update_lr", "num_updates", "meta_batch_size", "metatrain_iterations", "meta_lr"):
        assert getattr(maml, name) == getattr(metasgd, name), name
    assert (maml.update_lr, maml.num_updates, maml.metatrain_iterations) == (0.01, 1, 70000)
    reptile = config_from_flags(sine_methods.run_flags("reptile", 10, 0, "/tmp/x"))
    assert (reptile.reptile_inner, reptile.update_lr, reptile.meta_lr, reptile.meta_batch_size,
            reptile.metatrain_iterations) == ("sgd", 0.02, 0.1, 1, 30000)


def _write_csv(path, means, ci):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = len(means)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"update{i}" for i in range(n)])
        w.writerow(means)
        w.writerow([c * np.sqrt(600) / 1.96 for c in ci])
        w.writerow(ci)


def test_table_reads_each_seeds_column_and_averages_them(tmp_path):
    root = str(tmp_path)
    made = {}
    for seed, post in ((0, 0.5), (1, 0.7)):
        values = sine_methods.run_flags("metasgd", 5, seed, root)
        means = [3.0, post] + [9.0] * 9  # the later columns must not be read (one learned step)
        _write_csv(sine_methods.csv_path(values), means, [0.2, 0.05] + [1.0] * 9)
        made[seed] = post
    results = sine_methods.cells(["maml", "metasgd"], [5], [0, 1], root, train=False)
    assert results == {("metasgd", 5): [(0, 0.5, 0.05), (1, 0.7, 0.05)]}
    text = sine_methods.table(results, ["maml", "metasgd"], [5])
    row = next(line for line in text.splitlines() if line.startswith("| Meta-SGD"))
    assert "seed 0: 0.500 +- 0.050" in row and "seed 1: 0.700 +- 0.050" in row
    assert f"| {np.mean(list(made.values())):.3f} |" in row
    maml = next(line for line in text.splitlines() if line.startswith("| MAML"))
    assert "not run" in maml
