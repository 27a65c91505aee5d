"""Flags, derived settings and log-directory names, as the original main.py."""
import re
import shlex
import subprocess
import sys

import pytest

import main as entry
from maml_tf.run.config import Config, UsageError
from tests.conftest import REPO_ROOT

USAGE_LINES = [line.strip() for line in entry.__doc__.splitlines() if line.strip().startswith("python main.py")]


def _config(argv):
    entry.FLAGS.unparse_flags()
    try:
        entry.FLAGS(["main.py"] + argv)
        return entry.config_from_flags()
    finally:
        entry.FLAGS.unparse_flags()


def test_all_original_usage_lines_are_documented():
    assert len(USAGE_LINES) == 7


@pytest.mark.parametrize("line,exp", [
    (0, "cls_5.mbs_25.ubs_10.numstep1.updatelr0.001nonorm"),
    (1, "cls_5.mbs_25.ubs_10.numstep1.updatelr0.001oraclenonorm"),
    (3, "cls_5.mbs_32.ubs_1.numstep1.updatelr0.4batchnorm"),
    (4, "cls_20.mbs_16.ubs_1.numstep5.updatelr0.1batchnorm"),
    (5, "cls_5.mbs_4.ubs_1.numstep5.updatelr0.01hidden32maxpoolbatchnorm"),
    (6, "cls_5.mbs_4.ubs_5.numstep5.updatelr0.01hidden32maxpoolbatchnorm"),
])
def test_usage_lines_parse_and_name_the_log_dir_as_the_original(line, exp):
    argv = shlex.split(USAGE_LINES[line])[2:]
    cfg = _config(argv).validate().resolved()
    assert cfg.exp_string == exp
    # ... and the same flags with --train=False name the same folder.
    assert _config(argv + ["--train=False"]).resolved().exp_string == exp


def test_released_checkpoint_folder_name():
    """The authors' released checkpoint sits in exactly the folder our naming gives."""
    argv = shlex.split(USAGE_LINES[5])[2:]
    assert _config(argv).exp_dir.endswith(
        "miniimagenet1shot/cls_5.mbs_4.ubs_1.numstep5.updatelr0.01hidden32maxpoolbatchnorm")


def test_defaults_are_the_originals():
    cfg = _config([])
    assert (cfg.datasource, cfg.num_classes, cfg.baseline) == ("sinusoid", 5, None)
    assert (cfg.pretrain_iterations, cfg.metatrain_iterations, cfg.meta_batch_size) == (0, 15000, 25)
    assert (cfg.meta_lr, cfg.update_batch_size, cfg.update_lr, cfg.num_updates) == (0.001, 5, 1e-3, 1)
    assert (cfg.norm, cfg.num_filters, cfg.conv, cfg.max_pool, cfg.stop_grad) == ("batch_norm", 64, True, False, False)
    assert (cfg.log, cfg.logdir, cfg.resume, cfg.train, cfg.test_iter, cfg.test_set) == (True, "/tmp/data", True, True, -1, False)
    assert (cfg.train_update_batch_size, cfg.train_update_lr) == (-1, -1)
    assert cfg.data_dir == "./data" and cfg.save_interval == 1000


def test_derived_rules():
    c = Config(datasource="miniimagenet", update_batch_size=1, num_updates=5)
    assert (c.test_num_updates, c.eval_num_updates, c.query_per_class, c.clip_value) == (1, 5, 15, 10.0)
    t = Config(datasource="miniimagenet", update_batch_size=1, train=False)
    assert (t.test_num_updates, t.query_per_class) == (10, 1)
    o = Config(datasource="omniglot", update_batch_size=1)
    assert (o.test_num_updates, o.query_per_class, o.clip_value) == (10, 1, None)
    s = Config()
    assert (s.test_num_updates, Config(train=False).test_num_updates) == (5, 10)
    oracle = Config(baseline="oracle", pretrain_iterations=0, metatrain_iterations=100).resolved()
    assert (oracle.pretrain_iterations, oracle.metatrain_iterations, oracle.dim_input) == (100, 0, 3)
    assert Config(num_query=7, datasource="omniglot").query_per_class == 7
    # iMAML's damped system is another computation: a folder of its own; undamped keeps the old name.
    imaml = Config(meta_gradient="implicit", imaml_lambda=10.0, cg_steps=5)
    damped = Config(meta_gradient="implicit", imaml_lambda=10.0, cg_steps=5, cg_damping=1.0, lam_damping=50.0)
    assert imaml.exp_string.endswith(".mgimplicitlam10.0cg5")
    assert damped.exp_string.endswith(".mgimplicitlam10.0cg5damp1.0_50.0")
    assert damped.engine_options == dict(imaml_lambda=10.0, cg_steps=5, cg_damping=1.0, lam_damping=50.0)
    # The pretrained baseline gets its own folder (the original shared the MAML run's).
    base = Config(pretrain_iterations=10, metatrain_iterations=0)
    assert base.exp_string != Config(metatrain_iterations=10).exp_string


@pytest.mark.parametrize("kwargs,flag", [
    (dict(datasource="mnist"), "--datasource"),
    (dict(baseline="oracle", datasource="omniglot"), "--baseline=oracle"),
    (dict(norm="group_norm"), "--norm"),
    (dict(meta_batch_size=0), "--meta_batch_size"),
    (dict(num_updates=0), "--num_updates"),
    (dict(datasource="omniglot", num_classes=1), "--num_classes"),
    (dict(metatrain_iterations=0), "--metatrain_iterations"),
    (dict(meta_gradient="implicit", cg_damping=-1.0), "--cg_damping"),
    (dict(cg_damping=1.0), "--meta_gradient=implicit"),
])
def test_bad_settings_name_the_flag(kwargs, flag):
    with pytest.raises(UsageError, match=re.escape(flag)):
        Config(**kwargs).validate()


def test_help_lists_the_original_flags():
    out = subprocess.run([sys.executable, "main.py", "--helpfull"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120).stdout
    for name in ["datasource", "num_classes", "baseline", "pretrain_iterations", "metatrain_iterations",
                 "meta_batch_size", "meta_lr", "update_batch_size", "update_lr", "num_updates", "norm",
                 "num_filters", "conv", "max_pool", "stop_grad", "log", "logdir", "resume", "train",
                 "test_iter", "test_set", "train_update_batch_size", "train_update_lr", "seed", "data_dir"]:
        assert re.search(rf"--(\[no\])?{name}:", out), name
