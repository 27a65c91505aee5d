"""The sinusoid figures (maml_tf.paper.figures) from the checkpoints and CSVs of short real runs."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from maml_tf.paper import figures, results
from maml_tf.paper.experiments import BY_NAME
from test_results import REPO, sinusoid_logroot  # the short real runs, made once per session

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_figures_from_short_sinusoid_runs(tmp_path):
    pytest.importorskip("matplotlib")
    root = sinusoid_logroot()
    lines = []
    written = figures.make_figures(root, str(tmp_path / "figs"), budget=True, rows=2, out=lines.append)
    assert [os.path.basename(p) for p in written] == ["figure3.png", "figure2.png"]
    assert _png_size(written[0]) == (1000, 400)  # 2 panels (K=5, K=10)
    assert _png_size(written[1]) == (1600, 600)  # 4 columns x 2 tasks
    assert not any("no " in l for l in lines), lines  # every run was found

    # Figure 3 plots the CSVs' numbers: one panel per K, MAML, pretrained and oracle each.
    curves, missing = figures.figure3_curves(root, budget=True)
    assert missing == [] and sorted(curves) == [5, 10]
    assert [c[0] for c in curves[5]] == ["MAML (ours)", "pretrained, step=0.01", "oracle"]
    assert [c[0] for c in curves[10]] == ["MAML (ours)", "pretrained, step=0.02", "oracle"]
    cfg = BY_NAME["sinusoid-maml-k5"].config(budget=True, logroot=root)
    d = results.read_test_csv(cfg.test_csv_path)
    np.testing.assert_array_equal(curves[5][0][1].means, d.means)


def test_figure2_adaptation_is_the_models_inner_loop():
    """The curves of Figure 2 come from the same inner steps the model's evaluation takes:
    the query MSE of adapt_predictions after j steps equals model.evaluate's column j."""
    root = sinusoid_logroot()
    cfg = BY_NAME["sinusoid-maml-k5"].config(budget=True, logroot=root)
    model, itr = figures.load_run_model(cfg)
    assert itr == 299
    amp, phase, x, y = figures.sample_tasks(1, k_max=10, seed=3)[0]
    xs, ys, xq, yq = x[:5], y[:5], x[5:], y[5:]
    preds = figures.adapt_predictions(model, xs, ys, xq, cfg.update_lr, steps=(0, 1, 10))
    losses, _ = model.evaluate(*(a[None].astype(np.float32) for a in (xs, ys, xq, yq)), num_steps=10)
    for j in (1, 10):
        np.testing.assert_allclose(np.mean((preds[j] - yq[:, 0]) ** 2), losses[0, j], rtol=1e-4)
    # Column 0 of the evaluation is the support loss before adaptation.
    pre_support = figures.adapt_predictions(model, xs, ys, xs, cfg.update_lr, steps=(0,))[0]
    np.testing.assert_allclose(np.mean((pre_support - ys[:, 0]) ** 2), losses[0, 0], rtol=1e-4)


def test_figures_report_missing_runs(tmp_path):
    pytest.importorskip("matplotlib")
    root = tmp_path / "logs"
    shutil.copytree(sinusoid_logroot(), root)
    oracle = BY_NAME["sinusoid-oracle-k5"].config(budget=True, logroot=str(root))
    os.remove(oracle.test_csv_path)
    lines = []
    figures.make_figures(str(root), str(tmp_path / "figs"), budget=True, rows=1, out=lines.append)
    assert any("sinusoid-oracle-k5" in l and "reproduce/run.py --experiment sinusoid-oracle-k5 --budget" in l
               for l in lines), lines
    with pytest.raises(figures.FiguresError, match="no sinusoid test CSVs"):
        figures.make_figures(str(root), str(tmp_path / "figs"), budget=False)  # no full-length runs


def test_missing_matplotlib_is_one_clear_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(figures.FiguresError, match="pip install matplotlib"):
        figures.pyplot()
    assert figures.main(["--logdir", str(tmp_path), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the figures need matplotlib")
    assert not (tmp_path / "f").exists()


def test_figures_cli(tmp_path):
    pytest.importorskip("matplotlib")
    r = subprocess.run([sys.executable, "-m", "maml_tf.paper.figures", "--logdir", sinusoid_logroot(), "--budget",
                        "--rows", "1", "--out", str(tmp_path / "out")], cwd=str(REPO),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "out" / "figure2.png").exists() and (tmp_path / "out" / "figure3.png").exists()


def test_figure3_with_the_original_codes_curves(tmp_path):
    """--original adds the authors' code's MAML curves (its test CSV and .pkl); every curve
    with a .pkl is drawn as the mean over the tasks that do not diverge, with the median."""
    import pickle
    pytest.importorskip("matplotlib")
    root = tmp_path / "logs"
    shutil.copytree(sinusoid_logroot(), root)
    rng = np.random.default_rng(0)
    orig = tmp_path / "original" / "cls_5.mbs_25.ubs_10.numstep1.updatelr0.01nonorm"
    orig.mkdir(parents=True)
    for k in (5, 10):
        m = rng.uniform(0.1, 2.0, (20, 11))
        m[3, 4:] = [30.0, 1e3, 1e6, np.inf, np.nan, np.nan, np.nan]  # one task diverges
        with np.errstate(invalid="ignore"):
            rows = [m.mean(0), m.std(0), 1.96 * m.std(0) / np.sqrt(20)]
        with open(orig / f"test_ubs{k}_stepsize0.01.csv", "w") as f:
            f.write(",".join(f"update{i}" for i in range(11)) + "\n")
            f.writelines(",".join(str(v) for v in r) + "\n" for r in rows)
        with open(orig / f"test_ubs{k}_stepsize0.01.pkl", "wb") as f:
            pickle.dump({"mses": m}, f)
    curves, missing = figures.figure3_curves(str(root), budget=True, original=str(tmp_path / "original"))
    assert missing == []
    label, data, _, _, per_task = curves[10][-1]
    assert label == "MAML (cbfinn/maml)"
    np.testing.assert_array_equal(per_task, m)  # the K=10 draw, read back from its .pkl
    # The curve drawn: the mean over the 19 tasks that do not diverge, its interval, and the
    # median over all 20 with the diverging task as +inf.
    means, ci95, kept = figures.trimmed(m)
    assert kept == 19
    ok = np.delete(m, 3, axis=0)
    np.testing.assert_allclose(means, ok.mean(0))
    np.testing.assert_allclose(ci95, 1.96 * ok.std(0) / np.sqrt(19))
    np.testing.assert_allclose(figures.medians(m), np.median(np.where(np.isnan(m), np.inf, m), axis=0))
    assert curves[5][0][0] == "MAML (ours)" and curves[5][0][4] is not None  # ours: its .pkl
    written = figures.make_figures(str(root), str(tmp_path / "figs"), budget=True, rows=1,
                                   out=lambda *a: None, original=str(tmp_path / "original"))
    assert _png_size(written[0]) == (1000, 400)
    # a folder without the original's tests is named, and the figure still drawn
    lines = []
    figures.make_figures(str(root), str(tmp_path / "figs2"), budget=True, rows=1, out=lines.append,
                         original=str(tmp_path / "nothing"))
    assert any(l.startswith("Figure 3: missing the original's K=5 test") for l in lines), lines


def test_figure3_keeps_a_diverging_task_off_the_mean_and_counts_it(tmp_path, monkeypatch):
    """One task in 600 diverging must not pull the plotted mean off the axes: the line is the
    mean of the others, the legend says how many were left out, the y range stays on the data."""
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(1)
    m = rng.uniform(0.1, 1.0, (600, 11)) * np.linspace(3, 1, 11)
    m[7, 3:] = np.geomspace(30, 1e9, 8)  # grows without bound
    csv = results.TestCSV(path="x.csv", means=m.mean(0), stds=m.std(0),
                          ci95=1.96 * m.std(0) / np.sqrt(600))
    saved = {}
    monkeypatch.setattr(plt, "close", lambda fig: saved.setdefault("fig", fig))
    figures.figure3({10: [("MAML (ours)", csv, "tab:green", "-", m)]}, str(tmp_path / "f3.png"))
    ax = saved["fig"].axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "MAML (ours): mean of 599 of 600 tasks (1 exceed MSE 25)" in labels
    assert "MAML (ours): median of all tasks" in labels
    assert not any("off scale" in l for l in labels)
    mean_line = ax.get_lines()[labels.index("MAML (ours): mean of 599 of 600 tasks (1 exceed MSE 25)")]
    np.testing.assert_allclose(mean_line.get_ydata(), np.delete(m, 7, axis=0).mean(0))
    assert ax.get_ylim()[1] < 5  # the CSV's mean (1e6 and more) would have set it
