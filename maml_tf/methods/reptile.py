"""Reptile (Nichol, Achiam, Schulman 2018): first-order meta-learning without a meta-gradient.

k steps of SGD (or Adam with beta1 = 0, as the paper's implementation) on each task's
support set, then theta <- theta + eps_t (mean_t phi_t - theta), with eps_t = meta_lr
annealed linearly to 0 over the meta-training iterations.  No gradient flows through
the inner loop; every parameter, the normalisation offsets included, is adapted.
Evaluation fine-tunes with the same inner optimiser; ``transductive=False`` normalises
each query example with the support set alone (the paper's non-transductive setting).
"""
import tensorflow as tf

from maml_tf.core.meta import ZERO
from maml_tf.methods.maml import MAML


class AnnealedSGD(tf.Module):
    """Reptile's outer step: theta <- theta - eps_t g with g = theta - mean phi, eps_t =
    eps (1 - t / T) (linear annealing to 0 over T iterations; T = 0: constant)."""

    def __init__(self, learning_rate, anneal_iterations, dtype, name=None):
        super().__init__(name=name)
        self.learning_rate, self.anneal_iterations = learning_rate, anneal_iterations
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self._dtype = dtype

    def apply_gradients(self, grads, variables):
        t = tf.cast(self.step, self._dtype)
        self.step.assign_add(1)
        eps = tf.constant(self.learning_rate, self._dtype)
        if self.anneal_iterations:
            eps = eps * tf.maximum(1.0 - t / float(self.anneal_iterations), 0.0)
        for var, g in zip(variables, grads):
            var.assign_sub(eps * g)


class Reptile(MAML):
    """Reptile: see the module docstring.  ``inner_optimizer``: 'sgd' (step alpha) or
    'adam' (step alpha, beta1 = 0, beta2 = 0.999, eps 1e-8, fresh per task);
    ``anneal_iterations``: the length of the outer step's linear annealing."""

    def __init__(self, spec, inner_optimizer="sgd", anneal_iterations=0, **kwargs):
        if inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"inner_optimizer={inner_optimizer!r}: use sgd or adam")
        self.inner_optimizer = inner_optimizer
        self._anneal = int(anneal_iterations)
        super().__init__(spec, **kwargs)
        self.metatrain_optimizer = AnnealedSGD(kwargs.get("meta_lr", 1e-3), self._anneal, self.dtype,
                                               name="reptile_sgd")

    def _adapt(self, inputa, labela, steps):
        """(support loss [T] and accuracy [T] at theta, the adapted parameters phi: weights
        and normalisation offsets, per task [T, ...])."""
        t = inputa.shape[0]
        params = {**{("w", k): v for k, v in self.weights.items()},
                  **{("n", k): v for k, v in self.norm_params.items()}}
        fast = {k: tf.broadcast_to(v, [t] + v.shape.as_list()) for k, v in params.items()}
        v2 = {k: tf.zeros_like(v) for k, v in fast.items()}
        lossa = acca = None
        for j in range(steps):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(list(fast.values()))
                pred = self._forward_params(inputa, fast, t)
                loss = self.loss(pred, labela)
                total = tf.reduce_sum(loss)
            if j == 0:
                lossa, acca = loss, self.accuracy(pred, labela)
            grads = tape.gradient(total, fast, unconnected_gradients=ZERO)
            if self.inner_optimizer == "sgd":
                fast = {k: fast[k] - self.update_lr * grads[k] for k in fast}
            else:  # Adam, beta1 = 0 (Reptile's): step alpha g / (sqrt(v_hat) + eps)
                v2 = {k: 0.999 * v2[k] + 0.001 * tf.square(grads[k]) for k in fast}
                corr = 1.0 - 0.999 ** (j + 1)
                fast = {k: fast[k] - self.update_lr * grads[k] / (tf.sqrt(v2[k] / corr) + 1e-8) for k in fast}
        if lossa is None:
            pred = self._forward_params(inputa, fast, t)
            lossa, acca = self.loss(pred, labela), self.accuracy(pred, labela)
        return lossa, acca, fast

    def _forward_params(self, x, params, t, step=0):
        weights = {k: v for (kind, k), v in params.items() if kind == "w"}
        norms = {k: v for (kind, k), v in params.items() if kind == "n"}
        # Per-task normalisation offsets [T, C]: the conv nets' grouped layout takes them
        # as they are; the fc nets run the tasks one by one.
        if not norms or (self.spec.kind == "conv" and self.spec.norm == "batch_norm"):
            return self.spec.forward(x, weights, norms, batched=True)
        return tf.stack([self.spec.forward(x[i], {k: w[i] for k, w in weights.items()},
                                           {k: n[i] for k, n in norms.items()})
                         for i in range(t)])

    def meta_gradients(self, inputa, labela, inputb, labelb):
        """(metrics, g = theta - mean_t phi_t for every meta-parameter): Reptile's direction."""
        lossa, acca, fast = self._adapt(inputa, labela, self.num_updates)
        t = tf.cast(inputa.shape[0], lossa.dtype)
        predb = self._forward_params(inputb, fast, inputa.shape[0])
        metrics = {"preloss": tf.reduce_sum(lossa) / t, "postloss": tf.reduce_sum(self.loss(predb, labelb)) / t,
                   "preacc": tf.reduce_sum(acca) / t, "postacc": tf.reduce_sum(self.accuracy(predb, labelb)) / t}
        grads = [self.weights[k] - tf.reduce_mean(fast[("w", k)], 0) for k in self.weights]
        grads += [self.norm_params[k] - tf.reduce_mean(fast[("n", k)], 0) for k in self.norm_params]
        return metrics, grads

    def _evaluate_step(self, inputa, labela, inputb, labelb, num_steps):
        losses, accs = [], []
        for j in range(num_steps + 1):
            lossa, acca, fast = self._adapt(inputa, labela, j)
            if j == 0:
                losses.append(lossa), accs.append(acca)
                continue
            predb = self._query(inputa, inputb, fast)
            losses.append(self.loss(predb, labelb)), accs.append(self.accuracy(predb, labelb))
        return tf.stack(losses, axis=1), tf.stack(accs, axis=1)

    def _query(self, inputa, inputb, fast):
        t = inputb.shape[0]
        if self.transductive or self.spec.norm != "batch_norm":
            return self._forward_params(inputb, fast, t)
        q = inputb.shape[1]
        out = []
        for i in range(t):
            x = tf.concat([tf.repeat(inputa[i][None], q, axis=0), inputb[i][:, None]], axis=1)
            params = {k: tf.repeat(v[i][None], q, axis=0) for k, v in fast.items()}
            out.append(self._forward_params(x, params, q)[:, -1])
        return tf.stack(out)
