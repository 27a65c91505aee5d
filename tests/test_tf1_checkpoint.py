"""Loading checkpoints of the original TF1 code (maml_tf.run.tf1_checkpoint, --init_checkpoint)."""
import csv
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.run.checkpoints import CheckpointManager
from maml_tf.run.config import Config, UsageError
from maml_tf.run.tf1_checkpoint import load_tf1_checkpoint, read_checkpoint, tf1_variable_names
from maml_tf.run.train import train as run_train
from maml_tf.run.model import build_model

REPO = pathlib.Path(__file__).resolve().parents[1]
RELEASED = REPO.parent / "shared" / "data" / "cbfinn_maml_checkpoint" / "miniimagenet1shot" / "model59000"

# The original README's 5-way 1-shot miniImageNet command (training flags).
MINI_1SHOT = dict(datasource="miniimagenet", metatrain_iterations=60000, meta_batch_size=4,
                  update_batch_size=1, update_lr=0.01, num_updates=5, num_classes=5,
                  num_filters=32, max_pool=True)

needs_released = pytest.mark.skipif(not os.path.exists(str(RELEASED) + ".index"),
                                    reason=f"released checkpoint not found at {RELEASED}")


def mini_config(**over):
    return Config(**{**MINI_1SHOT, "train": False, **over})


# ----------------------------------------------------------------------------- released checkpoint
@needs_released
def test_released_checkpoint_maps_every_variable():
    model = build_model(mini_config())
    report = load_tf1_checkpoint(model, str(RELEASED))
    _, raw = read_checkpoint(str(RELEASED))
    assert set(report.mapped) == set(raw), "every variable of the file is used"
    assert report.ignored == {}
    assert sorted(report.mapped.values()) == sorted(
        [f"weights/{k}" for k in model.weights] + [f"norm/{k}" for k in model.norm_params])
    expect = {"model/conv1": "conv1", "model/conv4": "conv4", "model/Variable": "b1",
              "model/Variable_1": "b2", "model/Variable_2": "b3", "model/Variable_3": "b4",
              "model/w5": "w5", "model/b5": "b5"}
    for name, key in expect.items():
        np.testing.assert_array_equal(model.weights[key].numpy(), raw[name])
    for i in range(4):
        np.testing.assert_array_equal(model.norm_params[f"{i}/beta"].numpy(), raw[f"model/{i}/beta"])


def _np_forward_original_conv(x, raw, img_size=84, channels=3):
    """The original miniImageNet conv net, written out in numpy (float64) from the raw
    checkpoint tensors: 4 x [3x3 SAME conv stride 1 + bias, batch norm with the batch's
    statistics (eps 1e-3, offset only), ReLU, 2x2 VALID max pool], flatten, matmul."""
    h = x.astype(np.float64).reshape(-1, img_size, img_size, channels)
    biases = ["model/Variable", "model/Variable_1", "model/Variable_2", "model/Variable_3"]
    for i in range(4):
        k = raw[f"model/conv{i + 1}"].astype(np.float64)
        n, hh, ww, _ = h.shape
        padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = np.zeros((n, hh, ww, k.shape[3]))
        for di in range(3):
            for dj in range(3):
                out += np.einsum("nhwc,cf->nhwf", padded[:, di:di + hh, dj:dj + ww, :], k[di, dj])
        out += raw[biases[i]]
        mean = out.mean(axis=(0, 1, 2))
        var = out.var(axis=(0, 1, 2))
        out = (out - mean) / np.sqrt(var + 1e-3) + raw[f"model/{i}/beta"]
        out = np.maximum(out, 0.0)
        ph, pw = hh // 2, ww // 2
        h = out[:, :2 * ph, :2 * pw].reshape(n, ph, 2, pw, 2, -1).max(axis=(2, 4))
    flat = h.reshape(h.shape[0], -1)
    return flat @ raw["model/w5"].astype(np.float64) + raw["model/b5"]


@needs_released
def test_released_checkpoint_forward_matches_independent_numpy():
    model = build_model(mini_config())
    load_tf1_checkpoint(model, str(RELEASED))
    _, raw = read_checkpoint(str(RELEASED))
    x = np.random.default_rng(7).uniform(0, 1, (5, 84 * 84 * 3)).astype(np.float32)
    ours = model.forward(tf.constant(x), model.weights).numpy()
    ref = _np_forward_original_conv(x, raw)
    assert ref.shape == (5, 5)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    # The batched (per-task weights) path gives the same logits.
    batched = model.forward(tf.constant(x[None]),
                            {k: v[None] for k, v in model.weights.items()}, batched=True).numpy()
    np.testing.assert_allclose(batched[0], ref, rtol=1e-4, atol=1e-4)


@needs_released
@pytest.mark.parametrize("over, names, flag", [
    (dict(num_filters=64), "model/conv1", "--num_filters=32"),
    (dict(datasource="omniglot", num_filters=64, max_pool=False), "model/conv1", "--datasource=miniimagenet"),
    (dict(max_pool=False), "model/w5", "--max_pool=True"),
    (dict(num_classes=20), "model/w5", "--num_classes=5"),
    (dict(norm="None"), "model/0/beta", "--norm=batch_norm"),
    (dict(norm="layer_norm"), "model/0/gamma", "--norm=batch_norm"),
    (dict(conv=False), "model/Variable", "--conv"),
])
def test_released_checkpoint_wrong_architecture_fails_clearly(over, names, flag):
    model = build_model(mini_config(**over))
    before = {k: v.numpy().copy() for k, v in model.weights.items()}
    with pytest.raises(UsageError) as e:
        load_tf1_checkpoint(model, str(RELEASED))
    msg = str(e.value)
    assert "\n" not in msg
    assert names in msg and flag in msg, msg
    for k, v in model.weights.items():  # nothing assigned
        np.testing.assert_array_equal(v.numpy(), before[k])


def test_missing_or_foreign_checkpoint_fails_clearly(tmp_path):
    model = build_model(Config(datasource="sinusoid", norm="None", train=False))
    with pytest.raises(UsageError, match=r"model59000\.index is missing"):
        load_tf1_checkpoint(model, str(tmp_path / "model59000"))
    # A maml-tf (object-based) checkpoint is not the original's.
    path = CheckpointManager(str(tmp_path / "ours"), model).save(0, 1)
    with pytest.raises(UsageError, match="maml-tf checkpoint"):
        load_tf1_checkpoint(model, path)


# ----------------------------------------------------------------------------- fake TF1 checkpoints
def write_original_checkpoint(prefix, cfg, extras=True, seed=0):
    """Write a checkpoint the way the original TF1 code did for ``cfg``: the variables of
    its construct_fc_weights / construct_conv_weights (same calls, same creation order,
    inside variable_scope('model')), the contrib norm layers' variables under scopes
    '0'.. (conv) or '0','2','3',.. (fc), and, with ``extras``, Adam slots and moving
    statistics (a Saver over all global variables; the original saved only trainable ones).

    Returns {our key: value} for every parameter (keys as model.weights / norm_params)."""
    rng = np.random.default_rng(seed)
    v1 = tf.compat.v1
    values = {}

    def val(key, shape):
        values[key] = rng.standard_normal(shape).astype(np.float32)
        return values[key]

    def anon(key, shape):  # tf.Variable(...) without a name
        return v1.Variable(val(key, shape))

    g = tf.Graph()
    with g.as_default():
        with v1.variable_scope("model"):
            if cfg.classification and cfg.conv:
                nf = cfg.num_filters
                ch = 3 if cfg.datasource == "miniimagenet" else 1
                ins = [ch, nf, nf, nf]
                for i in range(4):
                    v1.get_variable(f"conv{i + 1}", initializer=val(f"conv{i + 1}", [3, 3, ins[i], nf]))
                    anon(f"b{i + 1}", [nf])
                if cfg.datasource == "miniimagenet":
                    v1.get_variable("w5", initializer=val("w5", [nf * 5 * 5, cfg.dim_output]))
                else:
                    v1.Variable(val("w5", [nf, cfg.dim_output]), name="w5")
                v1.Variable(val("b5", [cfg.dim_output]), name="b5")
                scopes, widths = ["0", "1", "2", "3"], [nf] * 4
            else:
                hidden = [40, 40] if cfg.datasource == "sinusoid" else [256, 128, 64, 64]
                sizes = [cfg.dim_input] + hidden + [cfg.dim_output]
                for i in range(len(sizes) - 1):
                    anon(f"w{i + 1}", [sizes[i], sizes[i + 1]])
                    anon(f"b{i + 1}", [sizes[i + 1]])
                scopes = ["0"] + [str(i + 1) for i in range(1, len(hidden))]
                widths = hidden
            if cfg.norm != "None":
                for s, w in zip(scopes, widths):
                    with v1.variable_scope(s):
                        v1.get_variable("beta", initializer=val(f"{s}/beta", [w]))
                        if cfg.norm == "layer_norm":
                            v1.get_variable("gamma", initializer=val(f"{s}/gamma", [w]))
                        elif extras:
                            v1.get_variable("moving_mean", initializer=np.zeros(w, np.float32), trainable=False)
                            v1.get_variable("moving_variance", initializer=np.ones(w, np.float32), trainable=False)
        trainable = v1.trainable_variables()
        if extras:  # two Adam optimisers, as the original's pretrain_op and metatrain_op
            loss = tf.add_n([tf.reduce_sum(v) for v in trainable])
            v1.train.AdamOptimizer(1e-3).minimize(loss)
            v1.train.AdamOptimizer(1e-3).minimize(loss)
        saver = v1.train.Saver(v1.global_variables() if extras else trainable)
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            saver.save(sess, prefix, write_meta_graph=False)
    return values


FAKE_CASES = {
    "sinusoid": dict(datasource="sinusoid", norm="None"),
    "sinusoid-batchnorm": dict(datasource="sinusoid", norm="batch_norm"),
    "sinusoid-oracle": dict(datasource="sinusoid", norm="None", baseline="oracle"),
    "omniglot5way": dict(datasource="omniglot", num_classes=5, update_batch_size=1),
    "omniglot20way-layernorm-maxpool": dict(datasource="omniglot", num_classes=20, norm="layer_norm",
                                            max_pool=True, num_filters=16),
    "omniglot-noconv-layernorm": dict(datasource="omniglot", conv=False, norm="layer_norm"),
    "miniimagenet5shot": dict(MINI_1SHOT, update_batch_size=5),
}


@pytest.mark.parametrize("case", sorted(FAKE_CASES))
def test_fake_original_checkpoints_load(tmp_path, case):
    cfg = Config(**{**FAKE_CASES[case], "train": False})
    prefix = str(tmp_path / "model1000")
    values = write_original_checkpoint(prefix, cfg, extras=True)
    model = build_model(cfg)
    report = load_tf1_checkpoint(model, prefix)
    assert sorted(values) == sorted(list(model.weights) + list(model.norm_params))
    for key, v in values.items():
        var = model.norm_params[key] if "/" in key else model.weights[key]
        np.testing.assert_array_equal(var.numpy(), v, err_msg=key)
    assert len(report.mapped) == len(values)
    assert report.ignored, "the Adam slots are reported as ignored"
    assert set(report.ignored.values()) <= {"Adam slot", "Adam step power", "batch-norm moving statistic"}
    assert "ignored" in str(report)


def test_fc_names_follow_creation_order():
    cfg = Config(datasource="sinusoid", norm="batch_norm", train=False)
    names = [(n, k) for n, _, k in tf1_variable_names(build_model(cfg).spec)]
    assert names == [("model/Variable", "w1"), ("model/Variable_1", "b1"), ("model/Variable_2", "w2"),
                     ("model/Variable_3", "b2"), ("model/Variable_4", "w3"), ("model/Variable_5", "b3"),
                     ("model/0/beta", "0/beta"), ("model/2/beta", "2/beta")]


@pytest.mark.parametrize("case, over, needle", [
    ("sinusoid", dict(baseline="oracle"), "--baseline=oracle"),
    ("sinusoid-oracle", dict(baseline=None), "--baseline=oracle"),
    ("sinusoid-batchnorm", dict(norm="None"), "--norm=batch_norm"),
    ("omniglot5way", dict(num_classes=20), "--num_classes=5"),
    ("omniglot5way", dict(conv=False), "--conv"),
    ("omniglot-noconv-layernorm", dict(norm="batch_norm"), "--norm=layer_norm"),
    ("omniglot-noconv-layernorm", dict(norm="None"), "--norm=layer_norm"),
    ("omniglot-noconv-layernorm", dict(conv=True), "--conv"),
    ("omniglot20way-layernorm-maxpool", dict(num_filters=64), "--num_filters=16"),
])
def test_fake_checkpoint_wrong_flags_fail_clearly(tmp_path, case, over, needle):
    prefix = str(tmp_path / "model0")
    write_original_checkpoint(prefix, Config(**{**FAKE_CASES[case], "train": False}), extras=False)
    model = build_model(Config(**{**FAKE_CASES[case], **over, "train": False}))
    with pytest.raises(UsageError) as e:
        load_tf1_checkpoint(model, prefix)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_prefix_forms(tmp_path):
    cfg = Config(datasource="sinusoid", norm="None", train=False)
    write_original_checkpoint(str(tmp_path / "model5"), cfg, extras=False)
    for form in ("model5", "model5.index", "model5.data-00000-of-00001", ""):
        model = build_model(cfg)
        load_tf1_checkpoint(model, str(tmp_path / form) if form else str(tmp_path))


# ----------------------------------------------------------------------------- through main.py
def make_mini_images(data_dir, classes=5, per_class=3, seed=0):
    """A tiny miniImageNet: data_dir/miniImagenet/{train,val,test}/<wnid>/*.jpg, 84x84 RGB."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split in ("train", "val", "test"):
        for c in range(classes):
            d = pathlib.Path(data_dir) / "miniImagenet" / split / f"n{split[:2]}{c:06d}"
            d.mkdir(parents=True)
            for j in range(per_class):
                base = rng.integers(0, 256, (1, 1, 3))
                img = np.clip(base + rng.integers(-40, 40, (84, 84, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"img{j}.jpg", quality=95)
    return str(data_dir)


@needs_released
def test_main_test_with_released_checkpoint(tmp_path):
    """The original 1-shot test command with --init_checkpoint, on a tiny image set."""
    data_dir = make_mini_images(tmp_path / "data")
    logdir = tmp_path / "logs"
    flags = [f"--{k}={v}" for k, v in MINI_1SHOT.items()]
    cmd = [sys.executable, str(REPO / "main.py"), *flags, "--train=False", "--test_set=True",
           f"--logdir={logdir}", f"--data_dir={data_dir}", "--num_test_tasks=4",
           f"--init_checkpoint={RELEASED}"]
    r = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Loaded original TF1 checkpoint" in r.stdout
    csv_path = logdir / mini_config().exp_string / "test_ubs1_stepsize0.01.csv"
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == [f"update{i}" for i in range(11)]  # 10 inner steps at test time
    assert len(rows) == 4
    acc = np.array(rows[1], dtype=float)
    assert np.all((acc >= 0) & (acc <= 1))


@needs_released
@pytest.mark.filterwarnings("ignore:.*classes; the standard miniImageNet")
def test_continue_meta_training_from_released_checkpoint(tmp_path):
    """--init_checkpoint with --train=True starts from the checkpoint's parameters
    (meta_lr=0 keeps them, so the saved checkpoint must hold them unchanged)."""
    data_dir = make_mini_images(tmp_path / "data")
    cfg = Config(**{**MINI_1SHOT, "metatrain_iterations": 1, "meta_batch_size": 1, "num_updates": 1,
                    "num_query": 1, "meta_lr": 0.0, "logdir": str(tmp_path / "logs"),
                    "data_dir": data_dir, "init_checkpoint": str(RELEASED)})
    lines = []
    run_train(cfg.validate().resolved(), out=lines.append)
    assert any("Loaded original TF1 checkpoint" in l for l in lines)
    model = build_model(cfg)
    manager = CheckpointManager(cfg.exp_dir, model)
    manager.restore(manager.latest(), weights_only=True)
    _, raw = read_checkpoint(str(RELEASED))
    np.testing.assert_array_equal(model.weights["conv1"].numpy(), raw["model/conv1"])
    np.testing.assert_array_equal(model.weights["b4"].numpy(), raw["model/Variable_3"])
    np.testing.assert_array_equal(model.norm_params["3/beta"].numpy(), raw["model/3/beta"])


@needs_released
def test_inspection_cli(capsys):
    from maml_tf.run import tf1_checkpoint
    flags = [f"--{k}={v}" for k, v in MINI_1SHOT.items()]
    assert tf1_checkpoint.main([str(RELEASED), *flags]) == 0
    out = capsys.readouterr().out
    assert "model/w5 [800,5]" in out and "model/Variable_3 -> weights/b4" in out
    assert "OK: all 14 parameters fit this model" in out
    assert tf1_checkpoint.main([str(RELEASED), "--datasource=miniimagenet"]) == 2
    assert "set --num_filters=32" in capsys.readouterr().err
