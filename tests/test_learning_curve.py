"""maml_tf.paper.learning_curve: the validation curve read back from a run's summaries."""
import csv
import json
import time

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.paper import learning_curve as lc
from maml_tf.paper.experiments import config_from_flags, parse_flags
from maml_tf.run.train import _write_scalars

FLAGS = ["--datasource=omniglot", "--metatrain_iterations=60000", "--meta_batch_size=32",
         "--update_batch_size=1", "--update_lr=0.4", "--num_updates=1"]


def _session(folder, prefix, values):
    """One training session's summaries: {iteration: accuracy after 1 step}."""
    writer = tf.summary.create_file_writer(str(folder))
    for itr, acc in values.items():
        accs = np.array([0.2] + [acc] * 10)
        _write_scalars(writer, prefix, itr, np.ones(11), accs, True)
    writer.flush()
    writer.close()


def test_curve_from_summaries_of_an_interrupted_run(tmp_path, capsys):
    argv = FLAGS + [f"--logdir={tmp_path}"]
    values, _ = parse_flags(list(argv))
    values["train"] = False
    exp = tmp_path / config_from_flags(values).exp_dir.split(str(tmp_path))[1].strip("/")
    rng = np.random.default_rng(0)
    first = {i: float(rng.uniform(0.3, 1)) for i in range(0, 1300, 100)}
    # Interrupted after 1200, resumed from the checkpoint at 1000: 1000-1200 written again.
    second = {i: float(rng.uniform(0.3, 1)) for i in range(1000, 2100, 100)}
    for folder, prefix, shift in ((exp / "val", "metaval_", 0.0), (exp, "metatrain_", 0.01)):
        _session(folder, prefix, {i: a + shift for i, a in first.items()})
        time.sleep(0.01)
        _session(folder, prefix, {i: a + shift for i, a in second.items()})
    (exp / "model_selection.json").write_text(json.dumps({
        "best_iteration": 2000, "column": 10, "metric": "accuracy", "split": "val", "num_tasks": 200,
        "seed": 2, "results": {"model1000": [0.9, 0.02], "model2000": [0.95, 0.01]}}))

    want = {**first, **second}  # the later session's values count
    its = np.array(sorted(want))
    val = np.array([want[i] for i in its])
    curve = lc.learning_curve(str(exp), step=1, window=3)
    np.testing.assert_array_equal(curve["iterations"], its)
    np.testing.assert_allclose(curve["val"], val, rtol=1e-6)
    np.testing.assert_allclose(curve["train"], val + 0.01, rtol=1e-6)
    by_hand = [val[max(0, k - 2):k + 1].mean() for k in range(len(val))]
    np.testing.assert_allclose(curve["val_mean"], by_hand, rtol=1e-6)
    assert curve["selection"]["best_iteration"] == 2000

    out = tmp_path / "fig" / "curve.png"
    pytest.importorskip("matplotlib")
    assert lc.main(argv + [f"--out={out}", "--window=3"]) == 0
    assert out.stat().st_size > 10_000
    # the best of a run short of its 60,000 iterations is the best so far; at full length, the best
    assert "best checkpoint so far model2000: 95.0 +- 1.0%" in capsys.readouterr().out
    (exp / "model59999.index").write_text("")
    assert lc.main(argv + [f"--out={out}", "--window=3"]) == 0
    assert "best checkpoint model2000: 95.0 +- 1.0%" in capsys.readouterr().out
    rows = list(csv.reader(open(out.with_suffix(".csv"))))
    assert rows[0][:3] == ["iteration", "val_accuracy", "val_accuracy_mean3"]
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], by_hand, rtol=1e-6)
    # The step-3 column exists too (10 steps are evaluated); a run without summaries does not.
    assert lc.learning_curve(str(exp), step=3)["val"].shape == val.shape
    assert lc.main(FLAGS + [f"--logdir={tmp_path / 'nothing'}"]) == 2
    assert lc.main(argv + ["--window=0"]) == 2
