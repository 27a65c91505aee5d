"""Networks, initialisation and losses against the original's definitions."""
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.core import losses
from maml_tf.core.networks import NetworkSpec, build_network


def test_architectures_match_the_original():
    sine = build_network("sinusoid", 1, 1, norm="None")
    assert (sine.kind, sine.dim_hidden) == ("fc", (40, 40))
    omni = build_network("omniglot", 784, 5)
    assert (omni.kind, omni.dim_hidden, omni.channels, omni.img_size) == ("conv", (64,), 1, 28)
    assert not omni.flatten and omni.head_init == "normal"
    mini = build_network("miniimagenet", 84 * 84 * 3, 5, num_filters=32, max_pool=True)
    assert mini.flatten and mini.head_init == "xavier" and mini.feature_size == 5
    w, n = mini.init(0)
    assert w["w5"].shape == (800, 5)  # num_filters * 5 * 5, as the original
    assert sorted(n) == ["0/beta", "1/beta", "2/beta", "3/beta"]
    fc = build_network("omniglot", 784, 5, conv=False)
    assert fc.dim_hidden == (256, 128, 64, 64)
    assert fc.norm_scopes == ["0", "2", "3", "4"]  # the original's forward_fc scopes


def test_initialisation_statistics():
    omni = build_network("omniglot", 784, 20)
    w, n = omni.init(seed=0)
    # Glorot uniform: bounds +-sqrt(6 / (fan_in + fan_out)), std = bound / sqrt(3).
    for key, fan_in, fan_out in [("conv1", 9, 9 * 64), ("conv2", 9 * 64, 9 * 64)]:
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        assert np.abs(w[key]).max() <= bound
        assert w[key].std() == pytest.approx(bound / np.sqrt(3), rel=0.05 if key == "conv2" else 0.2)
    # Omniglot head: N(0, 1).
    assert w["w5"].std() == pytest.approx(1.0, rel=0.2)
    assert abs(w["w5"].mean()) < 0.3
    for k in ("b1", "b2", "b3", "b4", "b5"):
        assert not w[k].any()
    assert all(not v.any() for v in n.values())
    # fc kernels: normal(0, 0.01) truncated at 2 std: |w| <= 0.02, std = 0.01 * 0.8796.
    fc = build_network("omniglot", 784, 5, conv=False)
    wf, _ = fc.init(seed=1)
    assert np.abs(wf["w1"]).max() <= 0.02
    assert wf["w1"].std() == pytest.approx(0.01 * 0.87962566, rel=0.02)
    mini = build_network("miniimagenet", 84 * 84 * 3, 5, num_filters=32, max_pool=True)
    wm, _ = mini.init(seed=2)
    bound = np.sqrt(6.0 / (800 + 5))
    assert np.abs(wm["w5"]).max() <= bound
    assert wm["w5"].std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    # The seed decides the initialisation.
    assert np.array_equal(omni.init(seed=0)[0]["conv2"], w["conv2"])
    assert not np.array_equal(omni.init(seed=1)[0]["conv2"], w["conv2"])


def test_xent_is_summed_and_divided_by_k():
    """N-way K-shot: the inner loss is N times the mean cross-entropy."""
    rng = np.random.default_rng(0)
    n, k = 5, 3
    logits = rng.standard_normal((n * k, n))
    labels = np.eye(n)[np.repeat(np.arange(n), k)]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ce = -np.log((p * labels).sum(1))
    assert float(losses.xent(logits, labels, k)) == pytest.approx(ce.sum() / k, rel=1e-12)
    assert float(losses.xent(logits, labels, k)) == pytest.approx(n * ce.mean(), rel=1e-12)
    assert float(losses.mse(logits, labels)) == pytest.approx(np.mean((logits - labels) ** 2), rel=1e-12)
    assert float(losses.accuracy(logits, labels)) == pytest.approx(np.mean(logits.argmax(1) == labels.argmax(1)))


def _np_conv_same(x, k, stride):
    """TF 'SAME' convolution in numpy (padding split with the odd pixel after)."""
    n, h, w, c = x.shape
    kh, kw, _, o = k.shape
    oh, ow = -(-h // stride), -(-w // stride)
    ph = max((oh - 1) * stride + kh - h, 0)
    pw = max((ow - 1) * stride + kw - w, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = np.zeros((n, oh, ow, o))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.tensordot(patch, k, axes=([1, 2, 3], [0, 1, 2]))
    return out


def _np_forward_omniglot(x, w, n, img):
    h = x.reshape(-1, img, img, 1)
    for i in range(1, 5):
        h = _np_conv_same(h, w[f"conv{i}"], 2) + w[f"b{i}"]
        mean = h.mean((0, 1, 2), keepdims=True)
        var = ((h - mean) ** 2).mean((0, 1, 2), keepdims=True)
        h = np.maximum((h - mean) / np.sqrt(var + 1e-3) + n[f"{i - 1}/beta"], 0)
    return h.mean((1, 2)) @ w["w5"] + w["b5"]


def test_conv_forward_matches_numpy_reference():
    rng = np.random.default_rng(3)
    spec = NetworkSpec("conv", 28 * 28, 5, (6,), norm="batch_norm", channels=1, img_size=28)
    w, n = spec.init(seed=4, dtype=np.float64)
    n = {k: rng.standard_normal(v.shape) for k, v in n.items()}
    x = rng.random((7, 28 * 28))
    ours = spec.forward(x, w, n).numpy()
    np.testing.assert_allclose(ours, _np_forward_omniglot(x, w, n, 28), rtol=1e-9, atol=1e-10)


def test_fc_norms_match_numpy():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((9, 6))
    for norm in ("batch_norm", "layer_norm"):
        spec = NetworkSpec("fc", 6, 2, (5, 4), norm=norm)
        w, n = spec.init(seed=0, dtype=np.float64)
        w = {k: v * 50 for k, v in w.items()}
        n = {k: v + rng.standard_normal(v.shape) for k, v in n.items()}
        h = x
        for i, scope in zip((1, 2), spec.norm_scopes):
            h = h @ w[f"w{i}"] + w[f"b{i}"]
            if norm == "batch_norm":  # over the batch, offset only, eps 1e-3
                h = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-3) + n[f"{scope}/beta"]
            else:  # over the features, scale and offset, eps 1e-12
                mu, var = h.mean(1, keepdims=True), h.var(1, keepdims=True)
                h = (h - mu) / np.sqrt(var + 1e-12) * n[f"{scope}/gamma"] + n[f"{scope}/beta"]
            h = np.maximum(h, 0)
        expected = h @ w["w3"] + w["b3"]
        np.testing.assert_allclose(spec.forward(x, w, n).numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("spec", [
    NetworkSpec("conv", 64, 3, (4,), norm="batch_norm", channels=1, img_size=8),
    NetworkSpec("conv", 64, 3, (4,), norm="layer_norm", channels=1, img_size=8),
    NetworkSpec("conv", 16 * 16 * 3, 3, (4,), norm="batch_norm", channels=3, img_size=16,
                max_pool=True, flatten=True, head_init="xavier"),
    NetworkSpec("fc", 5, 2, (7, 6), norm="batch_norm"),
])
def test_batched_forward_equals_per_task_forward(spec):
    """Per-task weights and per-task batch statistics in the batched (grouped) form."""
    rng = np.random.default_rng(9)
    t, b = 3, 4
    per_task = [spec.init(seed=s, dtype=np.float64) for s in range(t)]
    n = {k: rng.standard_normal(v.shape) for k, v in per_task[0][1].items()}
    stacked = {k: np.stack([p[0][k] for p in per_task]) for k in per_task[0][0]}
    x = rng.random((t, b, spec.dim_input)) * np.arange(1, t + 1)[:, None, None]
    batched = spec.forward(x, stacked, n, batched=True).numpy()
    for i in range(t):
        single = spec.forward(x[i], per_task[i][0], n).numpy()
        np.testing.assert_allclose(batched[i], single, rtol=1e-10, atol=1e-12)
