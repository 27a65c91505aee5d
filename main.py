"""
Usage Instructions (the original's, unchanged):
    10-shot sinusoid:
        python main.py --datasource=sinusoid --logdir=logs/sine/ --metatrain_iterations=70000 --norm=None --update_batch_size=10

    10-shot sinusoid baselines:
        python main.py --datasource=sinusoid --logdir=logs/sine/ --pretrain_iterations=70000 --metatrain_iterations=0 --norm=None --update_batch_size=10 --baseline=oracle
        python main.py --datasource=sinusoid --logdir=logs/sine/ --pretrain_iterations=70000 --metatrain_iterations=0 --norm=None --update_batch_size=10

    5-way, 1-shot omniglot:
        python main.py --datasource=omniglot --metatrain_iterations=60000 --meta_batch_size=32 --update_batch_size=1 --update_lr=0.4 --num_updates=1 --logdir=logs/omniglot5way/

    20-way, 1-shot omniglot:
        python main.py --datasource=omniglot --metatrain_iterations=60000 --meta_batch_size=16 --update_batch_size=1 --num_classes=20 --update_lr=0.1 --num_updates=5 --logdir=logs/omniglot20way/

    5-way 1-shot mini imagenet:
        python main.py --datasource=miniimagenet --metatrain_iterations=60000 --meta_batch_size=4 --update_batch_size=1 --update_lr=0.01 --num_updates=5 --num_classes=5 --logdir=logs/miniimagenet1shot/ --num_filters=32 --max_pool=True

    5-way 5-shot mini imagenet:
        python main.py --datasource=miniimagenet --metatrain_iterations=60000 --meta_batch_size=4 --update_batch_size=5 --update_lr=0.01 --num_updates=5 --num_classes=5 --logdir=logs/miniimagenet5shot/ --num_filters=32 --max_pool=True

    To run evaluation, use the '--train=False' flag and the '--test_set=True' flag to use the test set.

    For omniglot and miniimagenet training, prepare the data first (see README: data/prepare_omniglot.py,
    data/prepare_miniimagenet.py) into --data_dir (default ./data).

Documentation: README.md (quick start, results at a glance) and docs/README.md (every topic: the new
flags in docs/usage.md, reproducing the paper in docs/reproducing.md).
"""
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

import flags as maml_flags  # noqa: E402  (defines the flags)
from maml_tf.run.config import Config, UsageError  # noqa: E402

FLAGS = maml_flags.FLAGS


def config_from_flags(flag_values=FLAGS):
    """A plain Config from the parsed flags (library code never reads FLAGS)."""
    names = [f.name for f in dataclasses.fields(Config) if f.name != "explicit"]
    values = {n: flag_values[n].value for n in names}
    values["explicit"] = tuple(n for n in names if flag_values[n].present)
    return Config(**values)


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected argument(s) {' '.join(argv[1:])}: flags take the form --name=value",
              file=sys.stderr)
        return 2
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    from maml_tf.data.image_data import DataError, check_data_dir
    try:
        cfg = config_from_flags()
        if not cfg.pretrained:  # a bad flag is reported before TensorFlow loads (run() checks again)
            cfg.validate()
        # Before TensorFlow loads: on a CPU where TensorFlow leaves oneDNN off, whether to
        # turn it on is measured (once per machine and configuration; maml_tf.run.autotune),
        # after a check that the data are there (a missing folder is reported at once).
        from maml_tf.run.autotune import choose_onednn, choose_threads
        choose_onednn(cfg, out=lambda line: print(line, flush=True),
                      before_trial=lambda: check_data_dir(cfg.datasource, cfg.data_dir))
        # Likewise whether the conv net's ops share the cores or split them (2+ CPUs).
        choose_threads(cfg, out=lambda line: print(line, flush=True),
                       before_trial=lambda: check_data_dir(cfg.datasource, cfg.data_dir))
    except (UsageError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from maml_tf.runtime import import_tensorflow
    import_tensorflow()
    from maml_tf.run import train as training
    training.tf.get_logger().setLevel("ERROR")
    try:
        training.run(cfg)
    except (UsageError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except training.NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    app.run(main)
