"""Adam as TF1's ``tf.train.AdamOptimizer`` (the original's outer optimiser, beta)."""
import tensorflow as tf


class Adam(tf.Module):
    """theta <- theta - lr_t * m / (sqrt(v) + eps), lr_t = lr sqrt(1-b2^t) / (1-b1^t).

    The slots (m, v) and the step count t are variables, so a checkpoint of this
    module restores the optimiser exactly.
    """

    def __init__(self, variables, learning_rate=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8,
                 name=None):
        super().__init__(name=name)
        self.learning_rate = learning_rate
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False, name="m") for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False, name="v") for v in variables]

    def apply_gradients(self, grads, variables):
        """One Adam update of ``variables`` (same order as at construction)."""
        self.step.assign_add(1)
        dtype = variables[0].dtype
        t = tf.cast(self.step, dtype)
        lr_t = self.learning_rate * tf.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
        for var, g, m, v in zip(variables, grads, self.m, self.v):
            m.assign(self.beta1 * m + (1 - self.beta1) * g)
            v.assign(self.beta2 * v + (1 - self.beta2) * tf.square(g))
            var.assign_sub(lr_t * m / (tf.sqrt(v) + self.epsilon))
