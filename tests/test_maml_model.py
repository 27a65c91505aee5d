"""The batched meta-training step against the single-task reference functions."""
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.core import losses
from maml_tf.methods.maml import MAML
from maml_tf.core.meta import adapt, meta_gradient
from maml_tf.core.networks import NetworkSpec, build_network


def _sine_batch(rng, t, k):
    amp = rng.uniform(0.1, 5, (t, 1, 1))
    phase = rng.uniform(0, np.pi, (t, 1, 1))
    xa, xb = rng.uniform(-5, 5, (t, k, 1)), rng.uniform(-5, 5, (t, k, 1))
    return xa, amp * np.sin(xa - phase), xb, amp * np.sin(xb - phase)


def _class_batch(rng, spec, t, n, k, q):
    y = lambda m: np.tile(np.eye(n)[np.repeat(np.arange(n), m)][None], (t, 1, 1))
    return (rng.random((t, n * k, spec.dim_input)), y(k),
            rng.random((t, n * q, spec.dim_input)), y(q))


CASES = {
    "sinusoid": (build_network("sinusoid", 1, 1, norm="None"), "mse", 0.01, 2),
    "omniglot": (NetworkSpec("conv", 64, 3, (4,), norm="batch_norm", channels=1, img_size=8),
                 "xent", 0.4, 2),
    "mini": (NetworkSpec("conv", 16 * 16 * 3, 3, (4,), norm="batch_norm", channels=3,
                         img_size=16, max_pool=True, flatten=True, head_init="xavier"),
             "xent", 0.01, 3),
}


def _model_and_batch(case, task_mode, first_order=False, seed=0):
    spec, loss, alpha, n = CASES[case]
    k = 2
    model = MAML(spec, loss, update_batch_size=k, update_lr=alpha, num_updates=n,
                 first_order=first_order, seed=seed, task_mode=task_mode, dtype=tf.float64)
    rng = np.random.default_rng(seed)
    if case == "sinusoid":
        batch = _sine_batch(rng, 3, 5)
        # Scale theta up so that the second-order terms are not negligible.
        for v in model.weights.values():
            v.assign(v * 30)
    else:
        batch = _class_batch(rng, spec, 3, 3, k, 3)
        for v in model.norm_params.values():
            v.assign(rng.standard_normal(v.shape))
    return model, batch


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("task_mode", ["batched", "loop"])
@pytest.mark.parametrize("case", list(CASES))
def test_training_step_gradient_equals_mean_of_per_task_meta_gradients(case, task_mode, first_order):
    model, batch = _model_and_batch(case, task_mode, first_order)
    metrics, grads = model.meta_gradients(*batch)
    loss_fn = losses.make_xent(2) if model.classification else losses.mse
    fwd = lambda x, w: model.forward(x, w)
    weights = {k: v.numpy() for k, v in model.weights.items()}
    per_task = [meta_gradient(fwd, weights, (batch[0][i], batch[1][i]), (batch[2][i], batch[3][i]),
                              loss_fn, model.update_lr, model.num_updates, first_order)
                for i in range(3)]
    assert float(metrics["postloss"]) == pytest.approx(np.mean([float(p[0]) for p in per_task]), rel=1e-10)
    for var, g in zip(model.meta_vars, grads):
        key = next((k for k, v in model.weights.items() if v is var), None)
        if key is None:
            continue  # norm offsets: checked against finite differences below
        expected = np.mean([p[1][key].numpy() for p in per_task], axis=0)
        np.testing.assert_allclose(g.numpy(), expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("case", ["omniglot", "mini"])
def test_norm_offset_meta_gradient_matches_finite_differences(case):
    """The betas are meta-learned through every inner step, though not adapted."""
    model, batch = _model_and_batch(case, "batched")
    _, grads = model.meta_gradients(*batch)
    rng = np.random.default_rng(1)
    start = [v.numpy() for v in model.meta_vars]
    n_weights = len(model.weights)
    direction = [rng.standard_normal(v.shape) if i >= n_weights else np.zeros(v.shape)
                 for i, v in enumerate(model.meta_vars)]

    def loss_at(eps):
        for v, s, d in zip(model.meta_vars, start, direction):
            v.assign(s + eps * d)
        return float(model.meta_loss(*batch)[0])

    eps = 1e-7
    fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    loss_at(0.0)
    analytic = sum(float(np.sum(g.numpy() * d)) for g, d in zip(grads, direction))
    assert fd == pytest.approx(analytic, rel=1e-5)


def test_batched_and_loop_evaluation_agree_with_inner_loop():
    model, batch = _model_and_batch("omniglot", "batched")
    loop, _ = _model_and_batch("omniglot", "loop")
    losses_b, accs_b = model.evaluate(*batch, num_steps=4)
    losses_l, accs_l = loop.evaluate(*batch, num_steps=4)
    np.testing.assert_allclose(losses_b, losses_l, rtol=1e-10)
    np.testing.assert_array_equal(accs_b, accs_l)
    loss_fn = losses.make_xent(2)
    fwd = lambda x, w: model.forward(x, w)
    for i in range(3):
        w = {k: tf.constant(v.numpy()) for k, v in model.weights.items()}
        traj = adapt(fwd, w, (batch[0][i], batch[1][i]), loss_fn, model.update_lr, 4)
        assert losses_b[i, 0] == pytest.approx(float(loss_fn(fwd(batch[0][i], w), batch[1][i])), rel=1e-10)
        for j in range(1, 5):
            assert losses_b[i, j] == pytest.approx(
                float(loss_fn(fwd(batch[2][i], traj[j - 1]), batch[3][i])), rel=1e-10)


@pytest.mark.parametrize("options", [{}, {"lslr": True, "bnwb": True, "transductive": False}],
                         ids=["maml", "step-dependent-per-query"])
def test_loop_evaluation_maps_the_tasks_to_the_unrolled_numbers(options):
    """Loop mode evaluates the meta-batch inside tf.map_fn (one task's graph): in float32 the
    same numbers as the tasks unrolled, also with the step-dependent settings (per-step step
    sizes and normalisation) and per-query batch statistics."""
    spec, _, _, _ = CASES["omniglot"]
    batch = [np.asarray(a, np.float32) for a in _class_batch(np.random.default_rng(3), spec, 3, 3, 2, 3)]
    models = [MAML(spec, "xent", update_batch_size=2, update_lr=0.4, num_updates=2, seed=1,
                   task_mode="loop", **options) for _ in range(2)]
    assert models[0].map_eval_tasks
    models[1].map_eval_tasks = False
    mapped, unrolled = (m.evaluate(*batch, num_steps=2) for m in models)
    for got, want in zip(mapped, unrolled):
        assert got.shape == (3, 3)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(mapped[0][:, 0], mapped[0][:, 2])  # the inner steps did something


def test_metatrain_step_is_tf1_adam_on_the_meta_gradient():
    model, batch = _model_and_batch("sinusoid", "batched")
    before = [v.numpy() for v in model.meta_vars]
    _, g1 = model.meta_gradients(*batch)
    model.metatrain_step(*batch)
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    for v, w0, g in zip(model.meta_vars, before, g1):
        g = g.numpy()
        m, s = (1 - b1) * g, (1 - b2) * g * g
        lr_t = lr * np.sqrt(1 - b2) / (1 - b1)
        np.testing.assert_allclose(v.numpy(), w0 - lr_t * m / (np.sqrt(s) + eps), rtol=1e-10, atol=1e-15)
    # The pre-training step leaves the meta-training optimiser alone.
    model.pretrain_step(*batch)
    assert int(model.metatrain_optimizer.step.numpy()) == 1
    assert int(model.pretrain_optimizer.step.numpy()) == 1


def test_meta_gradients_are_clipped_when_asked():
    spec, loss, alpha, n = CASES["sinusoid"]
    rng = np.random.default_rng(0)
    batch = _sine_batch(rng, 2, 5)
    a = MAML(spec, loss, update_lr=alpha, num_updates=n, clip_value=1e-6, meta_lr=1.0, dtype=tf.float64)
    b = MAML(spec, loss, update_lr=alpha, num_updates=n, clip_value=None, meta_lr=1.0, dtype=tf.float64)
    _, grads = a.meta_gradients(*batch)
    assert max(float(tf.reduce_max(tf.abs(g))) for g in grads) > 1e-6
    w0 = [v.numpy() for v in a.meta_vars]
    a.metatrain_step(*batch)
    b.metatrain_step(*batch)
    # Adam's first step moves every weight by ~lr * sign(g) whatever the scale of g,
    # so compare the slots: the clipped run's first moments are bounded by 0.1 * 1e-6.
    assert max(float(tf.reduce_max(tf.abs(m))) for m in a.metatrain_optimizer.m) <= 0.1 * 1e-6 + 1e-18
    assert max(float(tf.reduce_max(tf.abs(m))) for m in b.metatrain_optimizer.m) > 1e-6
    assert any(not np.allclose(v.numpy(), w) for v, w in zip(a.meta_vars, w0))


@pytest.mark.parametrize("case", ["omniglot", "mini"])
def test_float32_grouped_convolution_path_agrees_with_loop(case):
    """float32 is the training dtype: there the batched path runs one grouped convolution."""
    spec, loss, alpha, n = CASES[case]
    rng = np.random.default_rng(2)
    batch = [a.astype(np.float32) for a in _class_batch(rng, spec, 3, 3, 2, 3)]
    out = {}
    for mode in ("batched", "loop"):
        model = MAML(spec, loss, update_batch_size=2, update_lr=alpha, num_updates=n, seed=3,
                     task_mode=mode)
        metrics, grads = model.meta_gradients(*batch)
        out[mode] = (float(metrics["postloss"]), [g.numpy() for g in grads])
    assert out["batched"][0] == pytest.approx(out["loop"][0], rel=1e-5)
    # float32 rounding differs between the two op orders; the bias gradients before
    # batch norm are zero up to that noise, so compare the whole gradient vector.
    gb = np.concatenate([g.ravel() for g in out["batched"][1]])
    gl = np.concatenate([g.ravel() for g in out["loop"][1]])
    assert np.linalg.norm(gb - gl) <= 1e-4 * np.linalg.norm(gl)
