"""Every fast path of the training step computes the same meta-gradient.

The reference is ``maml_tf.core.meta.meta_gradient`` (nested tapes, one task at a
time) run on a plain re-implementation of the networks written here with
textbook TF ops (no grouped convolutions, no custom gradients, no shared-weight
tricks), in float64.  The model's paths -- tasks batched (shared weights at
step 0 with zero per-task offsets, grouped convolutions, the closed-form
batch-norm gradient) or looped, eager or inside ``tf.function`` with or without
XLA, second or first order -- must all match it; float32 (the training dtype,
where the batched conv path runs oneDNN grouped convolutions) must match it to
float32 accuracy.  The compiled training step (its direct-call shortcut and
the packed metrics) must apply exactly the TF1 Adam update of those gradients.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.core import losses
from maml_tf.methods.maml import MAML
from maml_tf.core.meta import adapt, meta_gradient
from maml_tf.core.networks import NetworkSpec, build_network

BN_EPS, LN_EPS = 1e-3, 1e-12

# name: (spec, loss, alpha, inner steps, K support per class, classes, query per class)
CASES = {
    "sine": (build_network("sinusoid", 1, 1, norm="None"), "mse", 0.01, 2, 5, 1, 4),
    "fc_batchnorm": (NetworkSpec("fc", 6, 3, (8, 5), norm="batch_norm"), "xent", 0.3, 2, 2, 3, 2),
    "fc_layernorm": (NetworkSpec("fc", 6, 3, (8, 5), norm="layer_norm"), "xent", 0.3, 1, 2, 3, 2),
    "omniglot": (NetworkSpec("conv", 64, 3, (4,), norm="batch_norm", channels=1, img_size=8),
                 "xent", 0.4, 2, 1, 3, 2),
    "mini": (NetworkSpec("conv", 16 * 16 * 3, 3, (4,), norm="batch_norm", channels=3,
                         img_size=16, max_pool=True, flatten=True, head_init="xavier"),
             "xent", 0.05, 2, 2, 3, 3),
    "conv_layernorm": (NetworkSpec("conv", 64, 2, (3,), norm="layer_norm", channels=1, img_size=8),
                       "xent", 0.2, 1, 1, 2, 2),
}
TASKS = 3


# ----------------------------------------------------------------------------- reference
def _ref_norm(spec, h, norm, scope, bn_axes, ln_axes):
    if spec.norm == "batch_norm":
        mean = tf.reduce_mean(h, bn_axes, keepdims=True)
        var = tf.reduce_mean(tf.square(h - mean), bn_axes, keepdims=True)
        h = (h - mean) / tf.sqrt(var + BN_EPS) + norm[f"{scope}/beta"]
    elif spec.norm == "layer_norm":
        mean = tf.reduce_mean(h, ln_axes, keepdims=True)
        var = tf.reduce_mean(tf.square(h - mean), ln_axes, keepdims=True)
        h = (h - mean) / tf.sqrt(var + LN_EPS) * norm[f"{scope}/gamma"] + norm[f"{scope}/beta"]
    return tf.nn.relu(h)


def reference_forward(spec, x, w, norm):
    """The original networks for one task, written plainly."""
    if spec.kind == "fc":
        n = len(spec.dim_hidden) + 1
        h = x
        for i in range(1, n + 1):
            h = tf.matmul(h, w[f"w{i}"]) + w[f"b{i}"]
            if i < n:
                h = _ref_norm(spec, h, norm, spec.norm_scopes[i - 1], [0], [1])
        return h
    s, c = spec.img_size, spec.channels
    h = tf.reshape(x, [-1, s, s, c])
    for i in range(1, 5):
        h = tf.nn.conv2d(h, w[f"conv{i}"], 1 if spec.max_pool else 2, "SAME") + w[f"b{i}"]
        h = _ref_norm(spec, h, norm, str(i - 1), [0, 1, 2], [1, 2, 3])
        if spec.max_pool:
            h = tf.nn.max_pool2d(h, 2, 2, "VALID")
    h = tf.reshape(h, [tf.shape(h)[0], -1]) if spec.flatten else tf.reduce_mean(h, [1, 2])
    return tf.matmul(h, w["w5"]) + w["b5"]


def reference_meta_gradient(model, batch, first_order):
    """Mean over tasks of meta_gradient on the plain network; gradients of theta and of
    the (not adapted) norm parameters, in the order of model.meta_vars."""
    spec = model.spec
    weights = {k: tf.constant(v.numpy()) for k, v in model.weights.items()}
    norm = {k: tf.constant(v.numpy()) for k, v in model.norm_params.items()}
    loss_fn = (losses.make_xent(model.update_batch_size) if model.classification else losses.mse)
    t = batch[0].shape[0]
    total_loss, gw, gn = 0.0, None, None
    fwd = lambda x, w: reference_forward(spec, x, w, norm)  # noqa: E731
    for i in range(t):
        xa, ya, xb, yb = (tf.constant(a[i]) for a in batch)
        loss, g = meta_gradient(fwd, weights, (xa, ya), (xb, yb), loss_fn, model.update_lr,
                                model.num_updates, first_order=first_order)
        # The norm parameters are meta-learned but not adapted: differentiate the whole
        # computation with respect to them (through the inner gradients unless first order).
        with tf.GradientTape() as tape:
            tape.watch(list(norm.values()))
            fast = adapt(fwd, weights, (xa, ya), loss_fn, model.update_lr, model.num_updates,
                         first_order=first_order, outer_tape=None)[-1]
            query_loss = loss_fn(fwd(xb, fast), yb)
        g_norm = tape.gradient(query_loss, norm, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        total_loss += float(loss) / t
        gw = {k: g[k] / t + (0 if gw is None else gw[k]) for k in g}
        gn = {k: g_norm[k] / t + (0 if gn is None else gn[k]) for k in g_norm}
    flat = [gw[k] for k in model.weights] + [gn[k] for k in model.norm_params]
    return total_loss, [np.asarray(v) for v in flat]


# ----------------------------------------------------------------------------- fixtures
def make_model(case, task_mode="batched", first_order=False, dtype=tf.float64, seed=0, **kw):
    spec, loss, alpha, steps, k, n, q = CASES[case]
    model = MAML(spec, loss, update_batch_size=k, update_lr=alpha, num_updates=steps,
                 first_order=first_order, seed=seed, task_mode=task_mode, dtype=dtype, **kw)
    rng = np.random.default_rng(seed + 1)
    if case == "sine":  # larger weights: the second-order terms are not negligible
        for v in model.weights.values():
            v.assign(v * 30)
    else:  # non-zero biases and norm parameters, so that every term is exercised
        for name, v in list(model.weights.items()) + list(model.norm_params.items()):
            if not (name.startswith("w") or name.startswith("conv")):
                v.assign(rng.normal(0.0, 0.3, v.shape) + (1.0 if name.endswith("gamma") else 0.0))
    np_dtype = dtype.as_numpy_dtype
    if case == "sine":
        amp, phase = rng.uniform(0.1, 5, (TASKS, 1, 1)), rng.uniform(0, np.pi, (TASKS, 1, 1))
        xa, xb = rng.uniform(-5, 5, (TASKS, k, 1)), rng.uniform(-5, 5, (TASKS, q, 1))
        batch = (xa, amp * np.sin(xa - phase), xb, amp * np.sin(xb - phase))
    else:
        def labels(per_class):
            lab = np.stack([np.concatenate([rng.permutation(n) for _ in range(per_class)])
                            for _ in range(TASKS)])
            return np.eye(n)[lab]
        batch = (rng.random((TASKS, n * k, spec.dim_input)), labels(k),
                 rng.random((TASKS, n * q, spec.dim_input)), labels(q))
    return model, tuple(np.asarray(a, np_dtype) for a in batch)


_REFERENCE = {}


def reference(case, first_order):
    if (case, first_order) not in _REFERENCE:
        model, batch = make_model(case, first_order=first_order)
        _REFERENCE[case, first_order] = reference_meta_gradient(model, batch, first_order)
    return _REFERENCE[case, first_order]


def model_meta_gradient(model, batch, how):
    if how == "eager":
        metrics, grads = model.meta_gradients(*batch)
    else:
        fn = tf.function(model.meta_gradients, jit_compile=(how == "xla"), autograph=False)
        metrics, grads = fn(*[tf.constant(a) for a in batch])
    return float(metrics["postloss"]), [g.numpy() for g in grads]


def assert_close(got, want, rtol, per_tensor=True):
    g = np.concatenate([np.ravel(a) for a in got])
    w = np.concatenate([np.ravel(a) for a in want])
    assert np.linalg.norm(g - w) <= rtol * np.linalg.norm(w), (np.linalg.norm(g - w), np.linalg.norm(w))
    if per_tensor:  # and tensor by tensor, relative to the tensor's own scale
        for a, b in zip(got, want):
            assert np.abs(a - b).max() <= rtol * max(np.abs(b).max(), 1e-6 * np.abs(w).max()) + 1e-14


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("how", ["eager", "graph", "xla"])
@pytest.mark.parametrize("task_mode", ["batched", "loop"])
@pytest.mark.parametrize("case", list(CASES))
def test_meta_gradient_matches_reference_float64(case, task_mode, how, first_order):
    if how == "xla" and task_mode == "loop" and CASES[case][0].kind == "conv":
        pytest.skip("XLA of the per-task loop is covered by the fc cases (slow to compile)")
    if how == "xla" and CASES[case][0].max_pool and not first_order:
        pytest.skip("TF registers no XLA kernel for float64 MaxPoolGradGrad")
    model, batch = make_model(case, task_mode, first_order)
    loss, grads = model_meta_gradient(model, batch, how)
    want_loss, want = reference(case, first_order)
    assert loss == pytest.approx(want_loss, rel=1e-10)
    assert_close(grads, want, 1e-8)


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("case", ["sine", "fc_batchnorm", "omniglot", "mini"])
def test_float32_training_path_matches_float64_reference(case, first_order):
    """float32 batched (grouped oneDNN convolutions for the conv nets), as trained."""
    model, batch = make_model(case, "batched", first_order, dtype=tf.float32)
    loss, grads = model_meta_gradient(model, batch, "graph")
    want_loss, want = reference(case, first_order)
    assert loss == pytest.approx(want_loss, rel=1e-4)
    # Conv biases feed batch norm: their exact gradient is 0, float32 leaves noise.
    assert_close(grads, want, 2e-3, per_tensor=False)


@pytest.mark.parametrize("case", ["sine", "mini"])
def test_compiled_step_applies_tf1_adam_to_the_meta_gradient(case):
    """metatrain_step (direct call of the compiled graph, packed metrics) == Adam(meta_gradients)."""
    model, batch = make_model(case, "batched", dtype=tf.float64)
    model.clip_value = 0.05
    metrics, grads = model.meta_gradients(*batch)
    grads = [np.clip(g.numpy(), -0.05, 0.05) for g in grads]
    before = [v.numpy() for v in model.meta_vars]
    out = model.metatrain_step(*batch)
    assert set(out) == {"preloss", "postloss", "preacc", "postacc", "grad_finite"}
    for k in ("preloss", "postloss", "preacc", "postacc"):
        assert float(out[k]) == pytest.approx(float(metrics[k]), rel=1e-12)
    assert bool(out["grad_finite"]) is True
    lr_t = 1e-3 * np.sqrt(1 - 0.999) / (1 - 0.9)
    scale = max(np.abs(g).max() for g in grads)
    for v, w0, g in zip(model.meta_vars, before, grads):
        m, s = 0.1 * g, 0.001 * g * g
        want = w0 - lr_t * m / (np.sqrt(s) + 1e-8)
        # Adam's first step is ~lr * sign(g): where g is rounding noise (conv biases
        # before batch norm, exact gradient 0) eager and graph rounding may differ.
        real = np.abs(g) > 1e-9 * scale
        np.testing.assert_allclose(v.numpy()[real], want[real], rtol=1e-9, atol=1e-13)
    # More steps reuse the one traced graph.
    for _ in range(3):
        model.metatrain_step(*batch)
    assert model._metatrain.fn.experimental_get_tracing_count() == 1
    assert int(model.metatrain_optimizer.step.numpy()) == 4


def test_direct_call_equals_tf_function_call():
    a, batch = make_model("omniglot", "batched", dtype=tf.float32, seed=3)
    b, _ = make_model("omniglot", "batched", dtype=tf.float32, seed=3)
    for _ in range(2):
        out_a = a.metatrain_step(*batch)
        v = b._metatrain.fn(*[tf.constant(x) for x in batch]).numpy()  # plain tf.function call
        np.testing.assert_array_equal([out_a[k] for k in ("preloss", "postloss", "preacc", "postacc")], v[:4])
    for va, vb in zip(a.meta_vars, b.meta_vars):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())


def test_non_finite_gradient_is_reported():
    model, batch = make_model("sine", dtype=tf.float32)
    xa, ya, xb, yb = batch
    out = model.metatrain_step(xa, ya, xb, yb * np.float32(np.inf))
    assert bool(out["grad_finite"]) is False


def test_batch_norm_statistics_are_accurate_in_float32():
    """TF's one-pass float32 sum of ~10^6 numbers is off by ~1e-3 relative; the
    network's statistics (and hence its outputs) must be float32-accurate."""
    from maml_tf.core.networks import _standardize
    rng = np.random.default_rng(0)
    x64 = 3.0 + rng.standard_normal((40, 84, 84, 4))
    got = _standardize(tf.constant(x64, tf.float32), [0, 1, 2], BN_EPS).numpy()
    mean = x64.mean((0, 1, 2), keepdims=True)
    want = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean((0, 1, 2), keepdims=True) + BN_EPS)
    np.testing.assert_allclose(got.mean((0, 1, 2)), 0.0, atol=1e-5)  # was ~5e-3 with one-pass sums
    np.testing.assert_allclose(got, want, atol=1e-5)


_NO_ONEDNN = """
import json, sys
import numpy as np
import tensorflow as tf
sys.path.insert(0, {tests!r})
import test_fast_paths as t
from maml_tf.core.networks import grouped_conv_differentiable
out = {{"grouped": grouped_conv_differentiable()}}
for case in ("omniglot", "mini"):
    model, batch = t.make_model(case, "batched", False, dtype=tf.float32)
    loss, grads = t.model_meta_gradient(model, batch, "graph")
    want_loss, want = t.reference(case, False)
    t.assert_close(grads, want, 2e-3, per_tensor=False)
    out[case] = [loss, want_loss]
print(json.dumps(out))
"""


@pytest.mark.parametrize("kernels", ["eigen", "onednn_avx2"])
def test_float32_batched_conv_without_onednn(kernels):
    """eigen: TensorFlow without oneDNN (TF_ENABLE_ONEDNN_OPTS=0, as on macOS, most ARM
    builds, and by default on x86 CPUs without AVX-512 VNNI/BF16 or AMX) has no
    grouped-convolution gradient on CPU: the batched path must detect it and still give
    the reference meta-gradient.  onednn_avx2: oneDNN turned on with its kernels capped
    at AVX2 (what maml_tf.run.autotune.choose_onednn may pick on an AVX2-only CPU):
    grouped convolutions run and give the reference meta-gradient."""
    import platform
    tests = str(pathlib.Path(__file__).resolve().parent)
    if kernels == "eigen":
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3")
    else:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            pytest.skip("oneDNN's AVX2 kernels are x86 kernels")
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", ONEDNN_MAX_CPU_ISA="AVX2", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", _NO_ONEDNN.format(tests=tests)], env=env,
                          capture_output=True, text=True, timeout=600,
                          cwd=pathlib.Path(tests).parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["grouped"] is (kernels != "eigen")  # the case this test is for
    for case in ("omniglot", "mini"):
        assert out[case][0] == pytest.approx(out[case][1], rel=1e-4)


@pytest.mark.parametrize("pretrain", [False, True])
def test_fused_steps_equal_single_steps(pretrain):
    """metatrain_steps / pretrain_steps (K steps in one compiled call, XLA for the fc
    net) apply the same updates as K single calls, bit for bit, and stop after the first
    step whose meta-gradient is not finite."""
    a, batch = make_model("sine", dtype=tf.float32, seed=2)
    b, _ = make_model("sine", dtype=tf.float32, seed=2)
    rng = np.random.default_rng(5)
    k = 7
    chunk = [np.stack([x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype) for _ in range(k)])
             for x in batch]
    single = a.pretrain_step if pretrain else a.metatrain_step
    for i in range(k):
        single(*[c[i] for c in chunk])
    done = (b.pretrain_steps if pretrain else b.metatrain_steps)(*chunk)
    assert len(done) == k and all(bool(m["grad_finite"]) for m in done)
    for va, vb in zip(a.meta_vars, b.meta_vars):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    chunk[1][3] = chunk[1][3] * np.float32(np.inf)  # step 3's support labels: a non-finite gradient
    done = (b.pretrain_steps if pretrain else b.metatrain_steps)(*chunk)
    assert len(done) == 4 and not bool(done[-1]["grad_finite"])
