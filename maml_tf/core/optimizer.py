"""Adam as TF1's ``tf.train.AdamOptimizer`` (the original's outer optimiser, beta)."""
import numpy as np
import tensorflow as tf


class Adam(tf.Module):
    """theta <- theta - lr_t * m / (sqrt(v) + eps), lr_t = lr sqrt(1-b2^t) / (1-b1^t).

    The slots (m, v), the step count t and the powers b1^t, b2^t are variables, so a
    checkpoint of this module restores the optimiser exactly.  As TF1's ApplyAdam, the
    powers are running products in the variables' dtype (b^t by repeated float32
    multiplication, not pow: 1 - b2^t cancels, so their last bits matter) and every
    constant is rounded to that dtype before it is used; the arithmetic is TF1's too
    (m += (g - m)(1 - b1)), so the lockstep with the original code
    (``python -m maml_tf.paper.crosscheck``) sees the same updates to the last bit or two.  The slots of all the variables live
    in two flat variables (``m_flat``, ``v_flat``; ``m`` and ``v`` give the
    per-variable views): an XLA-compiled training step pays a fixed cost per
    resource variable it reads and writes (~3 us each on CPU, a tenth of the
    sinusoid step for 12 slots), and the update is elementwise, the same numbers
    either way.
    """

    def __init__(self, variables, learning_rate=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8,
                 name=None, schedule=None):
        super().__init__(name=name)
        self.learning_rate = learning_rate
        self.schedule = schedule  # step t (float tensor) -> step size, replacing learning_rate
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
        self._shapes = [tuple(v.shape.as_list()) for v in variables]
        self._sizes = [int(np.prod(s, dtype=np.int64)) for s in self._shapes]
        total = sum(self._sizes)
        dtype = variables[0].dtype if variables else tf.float32
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        # b1^t, b2^t for the next update t (TF1's beta1_power / beta2_power).
        self.beta1_power = tf.Variable(tf.constant(beta1, dtype), trainable=False, name="beta1_power")
        self.beta2_power = tf.Variable(tf.constant(beta2, dtype), trainable=False, name="beta2_power")
        self.m_flat = tf.Variable(tf.zeros([total], dtype), trainable=False, name="m")
        self.v_flat = tf.Variable(tf.zeros([total], dtype), trainable=False, name="v")

    def _split(self, flat):
        return [tf.reshape(p, s) for p, s in zip(tf.split(flat, self._sizes), self._shapes)]

    @property
    def m(self):
        """First moments, one tensor per variable (views of ``m_flat``)."""
        return self._split(self.m_flat)

    @property
    def v(self):
        """Second moments, one tensor per variable (views of ``v_flat``)."""
        return self._split(self.v_flat)

    def apply_gradients(self, grads, variables):
        """One Adam update of ``variables`` (same order as at construction)."""
        self.step.assign_add(1)
        dtype = variables[0].dtype
        # As TF1's ApplyAdam kernel, every constant is rounded to the variables' dtype
        # before it is used: 1 - beta2 computed in float32 is 1.000047e-3, not 1e-3 (its
        # cancellation changes the first steps by 2e-5 relative).
        one = tf.constant(1, dtype)
        beta1, beta2 = tf.constant(self.beta1, dtype), tf.constant(self.beta2, dtype)
        lr = (tf.cast(self.schedule(tf.cast(self.step - 1, dtype)), dtype) if self.schedule is not None
              else tf.constant(self.learning_rate, dtype))
        lr_t = lr * tf.sqrt(one - self.beta2_power) / (one - self.beta1_power)
        g = tf.concat([tf.reshape(tf.convert_to_tensor(x), [-1]) for x in grads], axis=0)
        m = self.m_flat.assign(self.m_flat + (g - self.m_flat) * (one - beta1))
        v = self.v_flat.assign(self.v_flat + (tf.square(g) - self.v_flat) * (one - beta2))
        step = lr_t * m / (tf.sqrt(v) + tf.constant(self.epsilon, dtype))
        for var, s in zip(variables, self._split(step)):
            var.assign_sub(s)
        self.beta1_power.assign(self.beta1_power * beta1)
        self.beta2_power.assign(self.beta2_power * beta2)
