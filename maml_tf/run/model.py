"""The model main.py builds for a configuration (network, method, engine, the step's path)."""
import tensorflow as tf

from maml_tf import methods
from maml_tf.core.networks import build_network
from maml_tf.run import autotune


def network_spec(cfg):
    """The network cbfinn/maml builds for these settings."""
    return build_network(cfg.datasource, cfg.dim_input, cfg.dim_output, conv=cfg.conv,
                         num_filters=cfg.num_filters, max_pool=cfg.max_pool, norm=cfg.norm,
                         precision=cfg.precision)


def input_shapes(cfg, meta_batch_size=None):
    """Shapes of (inputa, labela, inputb, labelb) of one meta-batch."""
    t = cfg.meta_batch_size if meta_batch_size is None else meta_batch_size
    n = cfg.num_classes_per_task
    nk, nq = n * cfg.update_batch_size, n * cfg.query_per_class
    return [[t, nk, cfg.dim_input], [t, nk, cfg.dim_output], [t, nq, cfg.dim_input], [t, nq, cfg.dim_output]]


def step_settings(cfg):
    """The MAML keyword arguments that change one training step's work."""
    return dict(loss="xent" if cfg.classification else "mse",
                update_batch_size=cfg.update_batch_size, update_lr=cfg.update_lr,
                num_updates=cfg.num_updates, first_order=cfg.stop_grad, clip_value=cfg.clip_value)


def build_model(cfg, tune=False, out=None):
    """The MAML model the original builds for these settings.

    How the step runs (``task_mode``, XLA) is what ``--task_mode`` / ``--xla`` say; left
    to 'auto', the fastest way on this machine when ``tune`` (measured once and cached:
    :mod:`maml_tf.run.autotune`), else the usual default.  Every way computes the same.
    """
    spec = network_spec(cfg)
    settings = step_settings(cfg)
    task_mode = None if cfg.task_mode == "auto" else cfg.task_mode
    if tune:
        task_mode, jit = autotune.choose(spec, settings, input_shapes(cfg), task_mode, cfg.xla, out=out)
    else:
        mode, jit = autotune.static_choice(spec, tf)
        task_mode, jit = task_mode or mode, jit if cfg.xla is None else cfg.xla
    options = dict(lslr=cfg.lslr, msl_iterations=cfg.msl_iterations, bnwb=cfg.bnwb,
                   ca_iterations=cfg.metatrain_iterations if cfg.cosine_annealing else 0,
                   min_meta_lr=cfg.min_meta_lr, transductive=cfg.transductive)
    if cfg.method == "anil":
        options["nil_test"] = cfg.nil_test
    if cfg.method == "reptile":
        options.update(inner_optimizer=cfg.reptile_inner, anneal_iterations=cfg.metatrain_iterations)
    return methods.make(cfg.method, spec, meta_lr=cfg.meta_lr, seed=cfg.seed, task_mode=task_mode,
                        jit_compile=jit, engine=cfg.meta_gradient, **cfg.engine_options, **settings,
                        **options)
