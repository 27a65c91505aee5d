"""The MAML meta-gradient: a gradient through gradients.

For one task with support set (x_a, y_a), query set (x_b, y_b), inner step size
alpha and n inner steps, MAML adapts theta_0 = theta by plain gradient descent,

    theta_{k+1} = theta_k - alpha * grad L_a(theta_k),        k = 0 .. n-1,

and meta-learns theta from the query loss L_b(theta_n).  By the chain rule,

    dL_b(theta_n)/dtheta = prod_{k=n-1..0} (I - alpha * H_a(theta_k)) grad L_b(theta_n),

where H_a is the Hessian of the support loss.  :func:`meta_gradient` lets
nested ``tf.GradientTape``s do this (the outer tape records the inner tapes'
gradient computations); :func:`meta_gradient_explicit` walks the product back
with Hessian-vector products.  ``first_order=True`` treats every inner gradient
as a constant (the paper's first-order approximation): then the product is the
identity and the meta-gradient is grad L_b(theta_n).
"""
from typing import Callable, Dict, Tuple

import tensorflow as tf

ZERO = tf.UnconnectedGradients.ZERO


def _as_tensors(weights):
    return {k: tf.convert_to_tensor(v) for k, v in weights.items()}


def _as_data(pair, dtype):
    """(inputs, labels) as tensors; floating arrays take the weights' dtype
    (so float64 numpy data works with float32 weights and vice versa)."""
    out = []
    for a in pair:
        t = tf.convert_to_tensor(a)
        if t.dtype.is_floating and t.dtype != dtype:
            t = tf.cast(t, dtype)
        out.append(t)
    return tuple(out)


def _weights_dtype(weights):
    dtypes = {v.dtype for v in weights.values() if v.dtype.is_floating}
    return dtypes.pop() if len(dtypes) == 1 else None


def inner_gradient(forward, fast, inputs, labels, loss_fn, first_order=False, outer_tape=None):
    """(L_a(fast), grad L_a(fast)) for one inner step.

    Called under ``outer_tape``, the gradient computation itself is recorded so
    that the outer tape can differentiate through it (second order).  With
    ``first_order`` the outer tape stops recording while it is computed, so the
    gradient is a constant to it (and nothing is stored for it).
    """
    with tf.GradientTape() as tape:
        tape.watch(list(fast.values()))
        loss = loss_fn(forward(inputs, fast), labels)
    return loss, tape_gradient(tape, loss, fast, first_order, outer_tape)


def tape_gradient(tape, target, sources, first_order=False, outer_tape=None):
    """d target / d sources from the inner ``tape`` (zeros where unconnected).

    Second order: the gradient computation is recorded by ``outer_tape`` (if
    any), which then differentiates through it.  First order: it is a constant
    to the outer tape, which stops recording while it is computed (so nothing
    is stored for it); without an outer tape, ``stop_gradient`` marks it so.
    """
    if first_order and outer_tape is not None:
        with outer_tape.stop_recording():
            return tape.gradient(target, sources, unconnected_gradients=ZERO)
    grads = tape.gradient(target, sources, unconnected_gradients=ZERO)
    return tf.nest.map_structure(tf.stop_gradient, grads) if first_order else grads


def sgd_step(fast, grads, update_lr):
    """theta' = theta - alpha * g, key by key (the inner update)."""
    return {k: fast[k] - update_lr * grads[k] for k in fast}


def adapt(forward, weights, support, loss_fn, update_lr, num_updates,
          first_order=False, outer_tape=None):
    """Fast weights [theta_1, ..., theta_n] after each inner step on ``support``."""
    inputa, labela = support
    fast = dict(weights)
    trajectory = []
    for _ in range(num_updates):
        _, grads = inner_gradient(forward, fast, inputa, labela, loss_fn, first_order, outer_tape)
        fast = sgd_step(fast, grads, update_lr)
        trajectory.append(fast)
    return trajectory


def meta_gradient(forward: Callable, weights: Dict[str, tf.Tensor], support: Tuple, query: Tuple,
                  loss_fn: Callable, update_lr: float, num_updates: int,
                  first_order: bool = False, engine: str = "nested", **engine_options):
    """(L_b(theta_n), dL_b(theta_n)/dtheta) for one task.

    forward(x, weights) is a pure function, ``weights`` a dict of tensors
    (theta), ``support`` = (inputa, labela), ``query`` = (inputb, labelb),
    ``loss_fn(pred, label)`` a scalar.  Returns the query loss after
    ``num_updates`` inner steps of size ``update_lr`` (alpha) and its gradient
    with respect to every entry of ``weights`` (a dict with the same keys).

    ``engine`` chooses how the gradient flows back (:mod:`maml_tf.core.engines`):
    'nested' (default: nested GradientTapes, below), 'checkpointed', 'truncated'
    (``truncate_steps=k``), 'implicit' (iMAML: ``imaml_lambda``, ``cg_steps``; the
    returned loss is at the proximal inner solution), 'es' (ES-MAML: ``es_samples``,
    ``es_sigma``, ``seed``); ``dropgrad=rate`` (``dropgrad_type``, ``seed``) for any.
    """
    weights = _as_tensors(weights)
    dtype = _weights_dtype(weights)
    if dtype is not None:
        support, query = _as_data(support, dtype), _as_data(query, dtype)
    if engine != "nested" or engine_options:
        from maml_tf.core import engines
        inputa, labela = support
        inputb, labelb = query
        problem = engines.Problem(
            theta=weights, update_lr=update_lr, num_updates=num_updates,
            inner_loss=lambda fast, extra, k: loss_fn(forward(inputa, fast), labela),
            outer_loss=lambda fast, extra: loss_fn(forward(inputb, fast), labelb))
        result = engines.run(problem, engine, engines.Options(first_order=first_order, **engine_options))
        return result.outer_loss, result.grad_theta
    inputb, labelb = query
    with tf.GradientTape() as outer:
        outer.watch(list(weights.values()))
        trajectory = adapt(forward, weights, support, loss_fn, update_lr, num_updates,
                           first_order, outer_tape=outer)
        fast = trajectory[-1] if trajectory else weights
        query_loss = loss_fn(forward(inputb, fast), labelb)
    grads = outer.gradient(query_loss, weights, unconnected_gradients=ZERO)
    return query_loss, grads


def hessian_vector_product(forward, theta, inputs, labels, loss_fn, vector, mode="reverse"):
    """H_a(theta) v for the support loss L_a, without forming H.

    mode='reverse': double backward, grad_theta <grad L_a(theta), v>.
    mode='forward': forward-over-backward, the JVP of grad L_a along v.
    """
    if mode == "reverse":
        with tf.GradientTape() as outer:
            outer.watch(list(theta.values()))
            with tf.GradientTape() as inner:
                inner.watch(list(theta.values()))
                loss = loss_fn(forward(inputs, theta), labels)
            grads = inner.gradient(loss, theta, unconnected_gradients=ZERO)
            dot = tf.add_n([tf.reduce_sum(grads[k] * tf.stop_gradient(vector[k])) for k in theta])
        return outer.gradient(dot, theta, unconnected_gradients=ZERO)
    if mode == "forward":
        keys = list(theta)
        with tf.autodiff.ForwardAccumulator(
                primals=[theta[k] for k in keys], tangents=[vector[k] for k in keys]) as acc:
            with tf.GradientTape() as tape:
                tape.watch(list(theta.values()))
                loss = loss_fn(forward(inputs, theta), labels)
            grads = tape.gradient(loss, theta, unconnected_gradients=ZERO)
        return {k: acc.jvp(grads[k], unconnected_gradients=ZERO) for k in keys}
    raise ValueError(f"unknown HVP mode {mode!r}: use 'reverse' or 'forward'")


def meta_gradient_explicit(forward: Callable, weights: Dict[str, tf.Tensor], support: Tuple,
                           query: Tuple, loss_fn: Callable, update_lr: float, num_updates: int,
                           first_order: bool = False, hvp: str = "reverse"):
    """Same result as :func:`meta_gradient`, computed by walking the chain rule back.

    Runs the inner loop storing theta_0..theta_n, takes g = grad L_b(theta_n),
    then for k = n-1 .. 0 applies g <- g - alpha * H_a(theta_k) g with
    Hessian-vector products (``hvp`` = 'reverse' or 'forward').  With
    ``first_order`` the correction terms are dropped and g = grad L_b(theta_n).
    """
    theta = _as_tensors(weights)
    dtype = _weights_dtype(theta)
    if dtype is not None:
        support, query = _as_data(support, dtype), _as_data(query, dtype)
    inputa, labela = support
    inputb, labelb = query
    thetas = [theta]
    for _ in range(num_updates):
        _, grads = inner_gradient(forward, thetas[-1], inputa, labela, loss_fn)
        thetas.append(sgd_step(thetas[-1], grads, update_lr))
    with tf.GradientTape() as tape:
        tape.watch(list(thetas[-1].values()))
        query_loss = loss_fn(forward(inputb, thetas[-1]), labelb)
    g = tape.gradient(query_loss, thetas[-1], unconnected_gradients=ZERO)
    if not first_order:
        for k in reversed(range(num_updates)):
            hg = hessian_vector_product(forward, thetas[k], inputa, labela, loss_fn, g, hvp)
            g = {key: g[key] - update_lr * hg[key] for key in g}
    return query_loss, g
