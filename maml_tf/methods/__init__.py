"""The meta-learners: MAML and its successors, each a change of one or two of MAML's hooks.

MAML (:class:`maml_tf.methods.maml.MAML`) adapts every weight with one step size alpha and
meta-learns theta from the query loss after n steps.  Its hooks (``adapted_keys``,
``inner_lr``, ``norms_at``, ``meta_gradients``, ``apply_meta_update``,
``_method_variables``) are where the methods below differ; everything else (the
networks, the data, the 600-task evaluation, checkpoints, tf.distribute, the command
line, the meta-gradient engines where they apply) is shared.  MAML++'s components are
options of every method (``lslr``, ``msl_iterations``, ``bnwb``, ``ca_iterations`` in
:class:`~maml_tf.methods.maml.MAML`, derivative-order annealing in the training loop).

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
import importlib

# Each method's module and class, imported on first use, so that ``METHODS`` is read without
# loading TensorFlow (main.py checks its config before TensorFlow loads).
_CLASSES = {"maml": ("maml", "MAML"), "metasgd": ("metasgd", "MetaSGD"), "anil": ("anil", "ANIL"),
            "reptile": ("reptile", "Reptile")}
METHODS = tuple(_CLASSES)
__all__ = ["ANIL", "MAML", "METHODS", "MetaSGD", "Reptile", "make"]


def _class(method):
    module, name = _CLASSES[method]
    return getattr(importlib.import_module(f"maml_tf.methods.{module}"), name)


def __getattr__(name):  # ``from maml_tf.methods import MAML``
    for method, (_, cls_name) in _CLASSES.items():
        if cls_name == name:
            return _class(method)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make(method, spec, **kwargs):
    """The meta-learner ``method`` ('maml', 'metasgd', 'anil', 'reptile') for ``spec``."""
    if method not in _CLASSES:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    return _class(method)(spec, **kwargs)
