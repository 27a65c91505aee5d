"""maml-tf: a faithful TensorFlow 2 reimplementation of MAML (Finn, Abbeel, Levine, ICML 2017).

Public surface:
  meta_gradient, meta_gradient_explicit  -- one task's meta-gradient, two ways
  MAML                                   -- meta-parameters, meta-train step, evaluation
  NetworkSpec, build_network             -- the original networks, pure forward functions
  Config                                 -- the original main.py's settings as a plain object

Names are imported on first use, so that tools that do not need TensorFlow
(listing experiments, reading result CSVs) start without it.
"""
import importlib

_EXPORTS = {
    "Config": "maml_tf.run.config", "UsageError": "maml_tf.run.config",
    "accuracy": "maml_tf.core.losses", "mse": "maml_tf.core.losses", "xent": "maml_tf.core.losses",
    "MAML": "maml_tf.methods.maml",
    "hessian_vector_product": "maml_tf.core.meta", "meta_gradient": "maml_tf.core.meta",
    "meta_gradient_explicit": "maml_tf.core.meta",
    "NetworkSpec": "maml_tf.core.networks", "build_network": "maml_tf.core.networks",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'maml_tf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
