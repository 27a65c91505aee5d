"""The meta-gradient against independent computations (float64)."""
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.core import losses
from maml_tf.core.meta import adapt, meta_gradient, meta_gradient_explicit
from maml_tf.core.networks import NetworkSpec, build_network


def _dot(a, b):
    return sum(float(np.sum(np.asarray(a[k]) * np.asarray(b[k]))) for k in a)


def _directional_fd(fn, weights, direction, eps):
    plus = {k: weights[k] + eps * direction[k] for k in weights}
    minus = {k: weights[k] - eps * direction[k] for k in weights}
    return (float(fn(plus)) - float(fn(minus))) / (2 * eps)


def _query_loss_after_adaptation(forward, loss_fn, support, query, alpha, n):
    """L_b(theta_n) as a plain function of theta (no tapes kept)."""
    def f(weights):
        w = {k: tf.constant(v) for k, v in weights.items()}
        traj = adapt(forward, w, support, loss_fn, alpha, n)
        return loss_fn(forward(query[0], traj[-1] if traj else w), query[1])
    return f


def _check_against_fd(forward, weights, support, query, loss_fn, alpha, n, rng, eps=1e-5,
                      n_dirs=3, rtol=1e-6):
    _, grads = meta_gradient(forward, weights, support, query, loss_fn, alpha, n)
    f = _query_loss_after_adaptation(forward, loss_fn, support, query, alpha, n)
    for _ in range(n_dirs):
        d = {k: rng.standard_normal(v.shape) for k, v in weights.items()}
        fd = _directional_fd(f, weights, d, eps)
        analytic = _dot({k: grads[k].numpy() for k in grads}, d)
        assert abs(fd - analytic) <= rtol * max(abs(fd), 1e-3), (fd, analytic)


def _sine_task(rng, k):
    amp, phase = rng.uniform(0.1, 5), rng.uniform(0, np.pi)
    xa, xb = rng.uniform(-5, 5, (k, 1)), rng.uniform(-5, 5, (k, 1))
    return (xa, amp * np.sin(xa - phase)), (xb, amp * np.sin(xb - phase))


@pytest.mark.parametrize("num_updates", [1, 3])
def test_fc_second_order_matches_finite_differences(num_updates):
    rng = np.random.default_rng(num_updates)
    spec = build_network("sinusoid", 1, 1, norm="None")
    w, _ = spec.init(seed=3, dtype=np.float64)
    # Larger weights than the init so that the second-order terms matter.
    w = {k: v * 30 + 0.1 * rng.standard_normal(v.shape) for k, v in w.items()}
    support, query = _sine_task(rng, 10)
    fwd = lambda x, ww: spec.forward(x, ww)
    _check_against_fd(fwd, w, support, query, losses.mse, 0.01, num_updates, rng)


def _small_conv(norm, max_pool, flatten, img=8, channels=1, filters=3, classes=3):
    return NetworkSpec("conv", img * img * channels, classes, (filters,), norm=norm,
                       channels=channels, img_size=img, max_pool=max_pool, flatten=flatten,
                       head_init="xavier" if flatten else "normal")


def _class_task(rng, spec, n, k):
    xa = rng.random((n * k, spec.dim_input))
    xb = rng.random((n * k, spec.dim_input))
    y = np.eye(n)[np.repeat(np.arange(n), k)]
    return (xa, y), (xb, y)


# Max-pooling makes the meta-loss only piecewise smooth (a pooled unit can
# switch inside a finite-difference step), so that case uses a tinier step.
@pytest.mark.parametrize("norm,max_pool,flatten,img,eps,rtol", [
    ("batch_norm", False, False, 8, 1e-6, 1e-6),   # Omniglot-style: strided convs, spatial mean
    ("batch_norm", True, True, 16, 1e-8, 1e-6),    # miniImageNet-style: max-pool, flatten
    ("layer_norm", False, False, 8, 1e-6, 1e-6),
])
def test_conv_second_order_matches_finite_differences(norm, max_pool, flatten, img, eps, rtol):
    rng = np.random.default_rng(7)
    spec = _small_conv(norm, max_pool, flatten, img=img)
    w, nparams = spec.init(seed=1, dtype=np.float64)
    nparams = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in nparams.items()}
    support, query = _class_task(rng, spec, 3, 2)
    fwd = lambda x, ww: spec.forward(x, ww, nparams)
    loss_fn = losses.make_xent(2)
    _check_against_fd(fwd, w, support, query, loss_fn, 0.4, 2, rng, eps=eps, rtol=rtol)


def test_linear_regression_closed_form():
    """Linear model, MSE: H = 2 X^T X / m, so the meta-gradient is
    prod_k (I - alpha H) grad L_b(theta_n), computed here in numpy alone."""
    rng = np.random.default_rng(0)
    m, d, alpha, n = 8, 4, 0.05, 3
    xa, xb = rng.standard_normal((m, d)), rng.standard_normal((m, d))
    ya, yb = rng.standard_normal((m, 1)), rng.standard_normal((m, 1))
    theta = rng.standard_normal((d, 1))
    fwd = lambda x, w: tf.matmul(x, w["w"])
    loss, grads = meta_gradient(fwd, {"w": theta}, (xa, ya), (xb, yb), losses.mse, alpha, n)
    h = 2 * xa.T @ xa / m
    t = theta.copy()
    for _ in range(n):
        t = t - alpha * 2 * xa.T @ (xa @ t - ya) / m
    g = 2 * xb.T @ (xb @ t - yb) / m
    expected = np.linalg.matrix_power(np.eye(d) - alpha * h, n) @ g
    np.testing.assert_allclose(grads["w"].numpy(), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(float(loss), np.mean((xb @ t - yb) ** 2), rtol=1e-12)
    _, fo = meta_gradient(fwd, {"w": theta}, (xa, ya), (xb, yb), losses.mse, alpha, n,
                          first_order=True)
    np.testing.assert_allclose(fo["w"].numpy(), g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("hvp", ["reverse", "forward"])
@pytest.mark.parametrize("first_order", [False, True])
def test_explicit_equals_nested_tapes(hvp, first_order):
    rng = np.random.default_rng(11)
    spec = _small_conv("batch_norm", False, False)
    w, nparams = spec.init(seed=2, dtype=np.float64)
    support, query = _class_task(rng, spec, 3, 1)
    fwd = lambda x, ww: spec.forward(x, ww, nparams)
    loss_fn = losses.make_xent(1)
    l1, g1 = meta_gradient(fwd, w, support, query, loss_fn, 0.4, 3, first_order=first_order)
    l2, g2 = meta_gradient_explicit(fwd, w, support, query, loss_fn, 0.4, 3,
                                    first_order=first_order, hvp=hvp)
    assert float(l1) == pytest.approx(float(l2), rel=1e-12)
    for k in g1:
        np.testing.assert_allclose(g1[k].numpy(), g2[k].numpy(), rtol=1e-9, atol=1e-12)


def test_first_order_is_plain_gradient_at_adapted_weights():
    rng = np.random.default_rng(5)
    spec = build_network("sinusoid", 1, 1, norm="None")
    w, _ = spec.init(seed=0, dtype=np.float64)
    w = {k: v * 30 for k, v in w.items()}
    support, query = _sine_task(rng, 5)
    fwd = lambda x, ww: spec.forward(x, ww)
    # Adapt without any tape, then differentiate L_b at the fixed theta_n.
    theta_n = adapt(fwd, {k: tf.constant(v) for k, v in w.items()}, support, losses.mse, 0.01, 2)[-1]
    theta_n = {k: tf.constant(v.numpy()) for k, v in theta_n.items()}
    with tf.GradientTape() as tape:
        tape.watch(list(theta_n.values()))
        lb = losses.mse(fwd(query[0], theta_n), query[1])
    plain = tape.gradient(lb, theta_n)
    loss, fo = meta_gradient(fwd, w, support, query, losses.mse, 0.01, 2, first_order=True)
    _, so = meta_gradient(fwd, w, support, query, losses.mse, 0.01, 2, first_order=False)
    assert float(loss) == pytest.approx(float(lb), rel=1e-12)
    for k in fo:
        np.testing.assert_allclose(fo[k].numpy(), plain[k].numpy(), rtol=1e-12, atol=1e-15)
    # ... and the second-order terms are really there.
    assert max(np.abs(so[k].numpy() - fo[k].numpy()).max() for k in fo) > 1e-8


def test_zero_inner_steps_is_plain_gradient():
    rng = np.random.default_rng(1)
    fwd = lambda x, w: tf.matmul(x, w["w"])
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 1))
    theta = rng.standard_normal((3, 1))
    _, g = meta_gradient(fwd, {"w": theta}, (x, y), (x, y), losses.mse, 0.1, 0)
    np.testing.assert_allclose(g["w"].numpy(), 2 * x.T @ (x @ theta - y) / 6, rtol=1e-12)


def test_accepts_variables_and_mixed_precision_data():
    """float32 weights (even tf.Variables) with float64 numpy data: the data take the
    weights' dtype, and the result matches the float64 computation to float32 accuracy."""
    rng = np.random.default_rng(2)
    spec = build_network("sinusoid", 1, 1, norm="None")
    w64, _ = spec.init(seed=1, dtype=np.float64)
    w64 = {k: v * 20 for k, v in w64.items()}
    w32 = {k: tf.Variable(v.astype(np.float32)) for k, v in w64.items()}
    support, query = _sine_task(rng, 5)
    fwd = lambda x, ww: spec.forward(x, ww)
    l64, g64 = meta_gradient(fwd, w64, support, query, losses.mse, 0.01, 2)
    l32, g32 = meta_gradient(fwd, w32, support, query, losses.mse, 0.01, 2)
    e32 = meta_gradient_explicit(fwd, w32, support, query, losses.mse, 0.01, 2)[1]
    assert l32.dtype == tf.float32 and float(l32) == pytest.approx(float(l64), rel=1e-4)
    for k in g64:
        scale = np.abs(g64[k].numpy()).max() + 1e-3
        assert np.abs(g32[k].numpy() - g64[k].numpy()).max() <= 1e-3 * scale
        assert np.abs(e32[k].numpy() - g64[k].numpy()).max() <= 1e-3 * scale
