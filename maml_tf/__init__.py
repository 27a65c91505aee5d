"""maml-tf: a faithful TensorFlow 2 reimplementation of MAML (Finn, Abbeel, Levine, ICML 2017).

Public surface:
  meta_gradient, meta_gradient_explicit  -- one task's meta-gradient, two ways
  MAML                                   -- meta-parameters, meta-train step, evaluation
  NetworkSpec, build_network             -- the original networks, pure forward functions
  Config                                 -- the original main.py's settings as a plain object
"""
from maml_tf.config import Config, UsageError
from maml_tf.losses import accuracy, mse, xent
from maml_tf.maml import MAML
from maml_tf.meta import hessian_vector_product, meta_gradient, meta_gradient_explicit
from maml_tf.networks import NetworkSpec, build_network

__all__ = ["Config", "UsageError", "MAML", "NetworkSpec", "build_network", "meta_gradient",
           "meta_gradient_explicit", "hessian_vector_product", "mse", "xent", "accuracy"]
__version__ = "0.1.0"
