"""reproduce/variants.py: every budget row, in every table, is a valid main.py run whose test
finds its training run, and reads a column the test CSV has."""
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "reproduce"))
import variants  # noqa: E402

from maml_tf.run.config import config_from_flags  # noqa: E402

ROWS = [(table, row, config, extra) for table, rows in variants.ROWS.items()
        for row, extras, _ in rows for config, extra in extras.items()]


@pytest.mark.parametrize("table,row,config,extra", ROWS, ids=[f"{t}:{c}:{r[:24]}" for t, r, c, _ in ROWS])
def test_row_trains_and_tests_the_same_run(table, row, config, extra, tmp_path):
    values = variants.flags_for(config, extra, 1000, str(tmp_path / table), str(tmp_path / "data"))
    train, test = config_from_flags(values), config_from_flags(variants.test_values(values, extra))
    assert train.train and not test.train and test.test_set
    assert test.exp_dir == train.exp_dir  # the test restores the run it trained
    column = extra.get("_column") or test.reported_steps[-1]
    assert column <= max(10, test.num_updates)  # the test CSV has update0..update{max(10, n)}


def test_precision_rows_differ_in_precision_and_seed_only():
    rows = [extras["5w1s"] for _, extras, _ in variants.ROWS["precision"]]
    cfgs = [config_from_flags(variants.flags_for("5w1s", e, 1000, "/tmp/x", "/tmp/d")) for e in rows]
    assert [(c.precision, c.seed) for c in cfgs] == [("float32", 0), ("float32", 1), ("bfloat16", 0), ("bfloat16", 1)]
    assert len({c.exp_dir for c in cfgs}) == 4  # four runs, four folders
    base = config_from_flags(variants.flags_for("5w1s", {}, 1000, "/tmp/x", "/tmp/d"))
    for c in cfgs:
        assert (c.update_lr, c.num_updates, c.meta_batch_size) == (base.update_lr, base.num_updates, base.meta_batch_size)


def test_own_settings_rows_convert_the_mean_loss_codes_step_sizes():
    """MAML++ and iMAML's codes take mean losses: here (N x the mean) their step is a / N and
    iMAML's lambda N x lam, so the 5-way and 20-way rows differ by exactly that factor."""
    own = {row: extras for row, extras, _ in variants.ROWS["own"]}
    mamlpp = next(v for k, v in own.items() if k.startswith("MAML++"))
    assert mamlpp["5w1s"]["update_lr"] == pytest.approx(0.1 / 5)
    assert mamlpp["20w1s"]["update_lr"] == pytest.approx(0.1 / 20)
    imaml = next(v for k, v in own.items() if k.startswith("iMAML"))
    assert imaml["5w1s"]["imaml_lambda"] == pytest.approx(10.0) and imaml["20w1s"]["imaml_lambda"] == pytest.approx(40.0)
    # the code's damping: lam_damping 10 per mean loss, N x that here; cg_damping scale-free
    assert imaml["5w1s"]["lam_damping"] == pytest.approx(50.0) and imaml["20w1s"]["lam_damping"] == pytest.approx(200.0)
    assert imaml["5w1s"]["cg_damping"] == imaml["20w1s"]["cg_damping"] == 1.0
    es = next(v for k, v in own.items() if k.startswith("ES-MAML"))["5w1s"]
    values = variants.flags_for("5w1s", es, variants.row_iterations(es, 1000), "/tmp/x", "/tmp/d")
    assert values["metatrain_iterations"] == 100 and "_length" not in values
    assert (values["es_samples"], values["es_sigma"]) == (150, 0.1)
    reptile = next(v for k, v in own.items() if k.startswith("Reptile"))
    values = variants.flags_for("5w1s", reptile["5w1s"], 1000, "/tmp/x", "/tmp/d")
    test = config_from_flags(variants.test_values(values, reptile["5w1s"]))
    assert test.update_batch_size == 1 and config_from_flags(values).update_batch_size == 10


FAKE_MAIN = '''
import json, os, sys
import numpy as np
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
n, per = int(flags["metatrain_iterations"]), 0.6 * int(flags["num_updates"])
steps = [50.0, 50.0, 50.0] + [per] * (n - 3)  # three tracing iterations, then the step
ends = np.cumsum(steps)
np.save(flags["step_times"], np.stack([np.arange(n), ends, np.zeros(n)], 1))
with open(flags["step_times"] + ".json", "w") as f:
    json.dump({"cpus": sorted(os.sched_getaffinity(0)), "autotune": os.environ.get("MAML_TF_AUTOTUNE")}, f)
'''


def test_cost_times_each_row_on_its_own_core(monkeypatch, tmp_path):
    """--cost: each row runs main.py with its own flags, pinned to one of the given cores, without
    the autotuner's trials; the table reads the median iteration after the three tracing ones
    from the step times main.py writes, and its ratio to the configuration's first row."""
    import json
    fake = tmp_path / "fake_main.py"
    fake.write_text(FAKE_MAIN)
    monkeypatch.setattr(variants, "python_main", lambda: [sys.executable, str(fake)])
    monkeypatch.setitem(variants.ROWS, "toy", [
        ("one step", {"5w1s": {}}, {"5w1s": None}),
        ("four steps", {"5w1s": dict(num_updates=4)}, {"5w1s": None}),
        ("ten steps, a tenth of the budget", {"5w1s": dict(num_updates=10, _length="10%")}, {"5w1s": None}),
    ])
    core = sorted(os.sched_getaffinity(0))[0]
    text = variants.cost("toy", 8, {"5w1s": 1000}, str(tmp_path / "cost"), str(tmp_path / "data"), [core, core])
    rows = [line.split(" | ") for line in text.splitlines()[2:] if line.startswith("| ")]
    assert text.splitlines()[-1].startswith("CPU: ")  # every speed figure names its CPU
    assert [r[0].lstrip("| ") for r in rows] == ["one step", "four steps", "ten steps, a tenth of the budget"]
    assert [r[2] for r in rows] == ["0.6 s", "2.4 s", "6 s"]  # the tracing iterations left out
    assert [r[3] for r in rows] == ["1.00", "4.00", "10.00"]
    assert [r[4] for r in rows] == ["1000", "1000", "100"]
    assert [r[5].rstrip(" |") for r in rows] == ["10 min", "40 min", "10 min"]
    side = sorted((tmp_path / "cost").rglob("*.npy.json"))
    assert len(side) == 3
    for path in side:
        assert json.loads(path.read_text()) == {"cpus": [core], "autotune": "0"}


def test_cost_too_short_says_which_iterations_are_left_out(monkeypatch, capsys):
    """--cost N < 6 leaves fewer than two timed iterations: a one-line error naming the four left out."""
    monkeypatch.setattr(sys, "argv", ["variants.py", "--table", "own", "--cost", "5"])
    with pytest.raises(SystemExit) as exc:
        variants.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--cost 5" in err and "iterations 1-3 trace" in err and "iteration 0" in err and "give 6" in err
