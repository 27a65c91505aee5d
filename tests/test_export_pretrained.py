"""Published models (maml_tf.run.pretrained, pretrained/) and the SavedModel export (maml_tf.run.export)."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT
from maml_tf.run import export, pretrained
from maml_tf.run.config import Config, UsageError
from maml_tf.core.meta import adapt
from maml_tf.data.tasks import make_task_source
from maml_tf.run.train import evaluate_tasks
from maml_tf.run.model import build_model

SINE = dict(datasource="sinusoid", norm="None", update_batch_size=10, update_lr=0.01,
            metatrain_iterations=200, meta_batch_size=5)


def run_main(*args):
    r = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *args], capture_output=True,
                       text=True, cwd=REPO_ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A sinusoid run trained and tested through main.py, published into a private
    pretrained/ folder."""
    root = tmp_path_factory.mktemp("pub")
    flags = [f"--{k}={v}" for k, v in SINE.items()] + [f"--logdir={root / 'logs'}"]
    run_main(*flags)
    run_main(*flags, "--train=False")
    old = pretrained.PRETRAINED_DIR
    pretrained.PRETRAINED_DIR = str(root / "pretrained")
    try:
        cfg = Config(**SINE, logdir=str(root / "logs"), train=False)
        folder, manifest = pretrained.publish("sine-test", cfg, command="python main.py ...")
        yield root, folder, manifest, cfg
    finally:
        pretrained.PRETRAINED_DIR = old


def test_publish_writes_weights_manifest_and_hashes(published):
    root, folder, manifest, cfg = published
    assert sorted(os.listdir(folder)) == ["manifest.json", "weights.npz"]
    assert manifest["iterations"] == 200 and manifest["seed"] == 0
    assert manifest["flags"]["update_lr"] == 0.01 and manifest["test"]["column"] == "update10"
    with np.load(os.path.join(folder, "weights.npz")) as z:
        assert all(z[k].dtype == np.float32 for k in z.files)
        assert {k.split("/", 1)[0] for k in z.files} == {"weights"}  # no norm, no optimizer state
    # The manifest's test numbers are the CSV's.
    csv_rows = (root / "logs" / cfg.exp_string / "test_ubs10_stepsize0.01.csv").read_text().splitlines()
    assert float(csv_rows[1].split(",")[10]) == pytest.approx(manifest["test"]["mean"])
    assert pretrained.verify("sine-test")["name"] == "sine-test"
    # A run stopped before its flags' iterations is listed as such; this one ran them all.
    assert manifest["run_iterations"] == 200
    assert pretrained._short_of_full_length(manifest) == ""
    stopped = dict(manifest, run_iterations=120)
    assert pretrained._short_of_full_length(stopped) == (
        ", SHORT OF FULL LENGTH (the run stopped at 120 of 200 iterations)")


def test_damaged_file_is_refused(published, tmp_path):
    _, folder, _, _ = published
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in os.listdir(folder):
        (copy / f).write_bytes(open(os.path.join(folder, f), "rb").read())
    data = bytearray((copy / "weights.npz").read_bytes())
    data[-10] ^= 1
    (copy / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(UsageError, match="does not have the sha256"):
        pretrained.verify(str(copy))
    with pytest.raises(UsageError, match="no manifest.json"):
        pretrained.verify(str(tmp_path / "nothing"))


def test_main_pretrained_evaluates_the_published_model(published):
    root, folder, manifest, cfg = published
    out = run_main(f"--pretrained={folder}", "--train=False", f"--logdir={root / 'eval'}")
    assert "Restoring model weights from published model sine-test" in out.stdout
    rows = (root / "eval" / cfg.exp_string / "test_ubs10_stepsize0.01.csv").read_text().splitlines()
    # The same weights, flags and test tasks: the manifest's number exactly.
    assert float(rows[1].split(",")[10]) == pytest.approx(manifest["test"]["mean"], rel=1e-6)


def _expected_predictions(model, cfg, batch, steps, lr):
    """maml_tf's own inner loop (maml_tf.core.meta.adapt) and forward on one task."""
    xa, ya, xb, _ = [tf.constant(a[0]) for a in batch]
    fwd = lambda x, w: model.spec.forward(x, w, model.norm_params)  # noqa: E731
    loss = model.loss
    if steps:
        fast = adapt(fwd, dict(model.weights), (xa, ya),
                     lambda p, y: tf.reduce_sum(loss(p, y)), lr, steps)[-1]
    else:
        fast = dict(model.weights)
    return fwd(xb, fast).numpy()


@pytest.mark.parametrize("case", ["sinusoid", "omniglot"])
def test_savedmodel_loads_without_maml_tf_and_predicts_as_maml_tf(case, tmp_path, omniglot_data_dir):
    if case == "sinusoid":
        cfg = Config(**{**SINE, "train": False})
        steps, lr = 4, 0.01
    else:
        cfg = Config(datasource="omniglot", num_classes=5, update_batch_size=1, update_lr=0.4,
                     data_dir=str(omniglot_data_dir), train=False, test_set=True, seed=3)
        steps, lr = 3, 0.4
    model = build_model(cfg)
    batch = make_task_source(cfg, "test", meta_batch_size=1, seed=5).sample()
    expected = _expected_predictions(model, cfg, batch, steps, lr)
    _, accs = model.evaluate(*batch, num_steps=steps)
    out = tmp_path / "saved"
    export.export(model, cfg, str(out), num_steps=steps, step_size=lr)
    np.savez(tmp_path / "task.npz", *[a[0] for a in batch])
    code = textwrap.dedent(f"""
        import sys
        sys.modules["maml_tf"] = None   # any import of maml_tf fails: TensorFlow alone
        import json, numpy as np, tensorflow as tf
        m = tf.saved_model.load({str(out)!r})
        z = np.load({str(tmp_path / 'task.npz')!r})
        xa, ya, xb = z["arr_0"], z["arr_1"], z["arr_2"]
        out = m.adapt_and_predict(support_inputs=xa, support_labels=ya, query_inputs=xb)
        sig = m.signatures["serving_default"](support_inputs=xa, support_labels=ya, query_inputs=xb)
        key = "logits" if "logits" in out else "predictions"
        np.save({str(tmp_path / 'pred.npy')!r}, out[key].numpy())
        np.save({str(tmp_path / 'sig.npy')!r}, sig[key].numpy())
        print(json.dumps(sorted(out)), [k for k, v in sys.modules.items() if k.startswith("maml_tf") and v is not None])
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert r.returncode == 0, r.stderr[-3000:]
    keys, mods = r.stdout.strip().splitlines()[-1].split("] ")
    assert mods == "[]"
    pred, sig = np.load(tmp_path / "pred.npy"), np.load(tmp_path / "sig.npy")
    np.testing.assert_allclose(pred, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(pred, sig)
    if case == "omniglot":
        assert json.loads(keys + "]") == ["classes", "logits", "probabilities"]
        acc = float(np.mean(pred.argmax(-1) == batch[3][0].argmax(-1)))
        assert acc == pytest.approx(float(accs[0, steps]))


def test_published_models_give_their_accuracy(omniglot_data_dir):
    """Every model in the repository's pretrained/ passes its hashes and, tested on 40 of
    the fixed test tasks, lands within 4 standard errors of its manifest's mean (the
    standard deviation over tasks is the manifest's 95% interval * sqrt(600) / 1.96)."""
    names = pretrained.list_names()
    if not names:
        pytest.skip("no published models in pretrained/")
    for name in names:
        manifest = pretrained.verify(name)
        cfg = pretrained.configure(Config(pretrained=name, train=False, test_set=True,
                                          data_dir=str(omniglot_data_dir),
                                          explicit=("train", "test_set", "data_dir")))
        if cfg.datasource == "miniimagenet":
            continue
        model = build_model(cfg)
        pretrained.load_into(model, name)
        t = manifest["test"]
        rows = evaluate_tasks(dataclasses.replace(cfg, num_test_tasks=40), model, "test")
        sd = t["ci95"] * np.sqrt(t["tasks"]) / 1.96
        got = rows[:, t["inner_steps"]].mean()
        assert abs(got - t["mean"]) <= 4 * sd / np.sqrt(40) + 1e-6, (name, got, t["mean"])
