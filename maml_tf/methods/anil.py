"""ANIL (Raghu, Raghu, Bengio, Vinyals 2020): almost no inner loop.

The inner loop adapts the output layer alone (``NetworkSpec.head_keys``); the body is
meta-learned through the head's adaptation.  ``nil_test``: evaluation without any inner
loop (NIL): a query's score for class c is the mean cosine similarity of its
penultimate representation to those of class c's support examples.
"""
import tensorflow as tf

from maml_tf.methods.maml import MAML


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
