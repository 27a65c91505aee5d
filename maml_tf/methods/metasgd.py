"""Meta-SGD (Li, Zhou, Chen, Li 2017): meta-learned per-parameter inner step sizes.

    theta_{k+1} = theta_k - a (.) grad L_a(theta_k)

with a (``alpha/<key>``) the same shape as each weight, initialised to alpha and
meta-learned with theta from the query loss (its gradient flows through the inner
steps like theta's: -grad L_a (.) v at each step).
"""
import numpy as np
import tensorflow as tf

from maml_tf.methods.maml import MAML


class MetaSGD(MAML):
    """Meta-SGD: a meta-learned step size for every weight entry (``alpha/<key>``)."""

    def _method_variables(self, np_dtype):
        self.alphas = {k: tf.Variable(np.full(v.shape, self.update_lr, np_dtype), name="alpha_" + k)
                       for k, v in self.weights.items()}
        return {f"alpha/{k}": v for k, v in self.alphas.items()}

    def inner_lr(self, key, step):
        return self.alphas[key]
