"""MAML's successors on MAML's core: each changes one or two of MAML's method hooks.

MAML (:class:`maml_tf.maml.MAML`) adapts every weight with one step size alpha and
meta-learns theta from the query loss after n steps.  Its hooks (``adapted_keys``,
``inner_lr``, ``norms_at``, ``meta_gradients``, ``apply_meta_update``,
``_method_variables``) are where the methods below differ; everything else (the
networks, the data, the 600-task evaluation, checkpoints, tf.distribute, the command
line, the meta-gradient engines where they apply) is shared.  MAML++'s components are
options of every method (``lslr``, ``msl_iterations``, ``bnwb``, ``ca_iterations`` in
:class:`~maml_tf.maml.MAML`, derivative-order annealing in the training loop).

``MetaSGD``  (Li et al. 2017)  theta_{k+1} = theta_k - a (.) grad L_a(theta_k), a learned
             step size per weight entry (same shapes as the weights; initialised to
             alpha), meta-learned with theta from the query loss.
``ANIL``     (Raghu et al. 2020)  the inner loop adapts the output layer only; the body is
             meta-learned through the head's adaptation.  ``nil_test``: evaluation
             without any inner loop (NIL): a query's score for class c is the mean cosine
             similarity of its penultimate representation to those of class c's support
             examples.
``Reptile``  (Nichol et al. 2018)  k steps of SGD (or Adam with beta1 = 0, as the paper's
             implementation) on each task's support set, then
             theta <- theta + eps_t (mean_t phi_t - theta), eps_t = meta_lr annealed
             linearly to 0 over the meta-training iterations.  No gradient through the
             inner loop (first order by construction); every parameter, normalisation
             offsets included, is adapted.
"""
import numpy as np
import tensorflow as tf

from maml_tf.maml import MAML
from maml_tf.meta import ZERO

METHODS = ("maml", "metasgd", "anil", "reptile")


class MetaSGD(MAML):
    """Meta-SGD: a meta-learned step size for every weight entry (``alpha/<key>``)."""

    def _method_variables(self, np_dtype):
        self.alphas = {k: tf.Variable(np.full(v.shape, self.update_lr, np_dtype), name="alpha_" + k)
                       for k, v in self.weights.items()}
        return {f"alpha/{k}": v for k, v in self.alphas.items()}

    def inner_lr(self, key, step):
        return self.alphas[key]


class ANIL(MAML):
    """ANIL: the inner loop adapts the output layer alone; ``nil_test``: no inner loop at
    evaluation (cosine similarity to the support examples' representations)."""

    def __init__(self, spec, nil_test=False, **kwargs):
        self.nil_test = bool(nil_test)
        super().__init__(spec, **kwargs)

    @property
    def adapted_keys(self):
        return self.spec.head_keys

    def _evaluate_step(self, inputa, labela, inputb, labelb, num_steps):
        if not self.nil_test:
            return super()._evaluate_step(inputa, labela, inputb, labelb, num_steps)
        if not self.classification:
            raise ValueError("NIL testing classifies: it needs a classification task")
        feats_a = tf.math.l2_normalize(self._features(inputa), -1)
        feats_b = tf.math.l2_normalize(self._features(inputb), -1)
        sims = tf.matmul(feats_b, feats_a, transpose_b=True)          # [T, Q, NK]
        per_class = tf.matmul(sims, labela) / tf.reduce_sum(labela, axis=1, keepdims=True)  # [T, Q, N]
        acc = self.accuracy(per_class, labelb)
        loss = self.loss(per_class, labelb)
        # No inner step: every column (support, steps 1..num_steps) holds NIL's values.
        return tf.stack([loss] * (num_steps + 1), axis=1), tf.stack([acc] * (num_steps + 1), axis=1)

    def _features(self, x):
        t = x.shape[0]
        fast = {k: tf.broadcast_to(v, [t] + v.shape.as_list()) for k, v in self.weights.items()}
        return self.spec.forward(x, fast, self.norms_at(0), batched=True, features=True)


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


def make(method, spec, **kwargs):
    """The meta-learner ``method`` ('maml', 'metasgd', 'anil', 'reptile') for ``spec``."""
    cls = {"maml": MAML, "metasgd": MetaSGD, "anil": ANIL, "reptile": Reptile}.get(method)
    if cls is None:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    return cls(spec, **kwargs)
