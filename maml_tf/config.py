"""A plain configuration object: the original main.py's flags and the rules it derived from them.

Library code reads a :class:`Config`, never absl flags; ``main.py`` builds one
from the command line.  Field names, defaults and meanings are the original's.
"""
import dataclasses
import os
from typing import Optional


class UsageError(ValueError):
    """A bad or contradictory setting; the message is one line naming the fix."""


DATASOURCES = ("sinusoid", "omniglot", "miniimagenet")


@dataclasses.dataclass
class Config:
    # dataset / method
    datasource: str = "sinusoid"
    num_classes: int = 5
    baseline: Optional[str] = None
    # training
    pretrain_iterations: int = 0
    metatrain_iterations: int = 15000
    meta_batch_size: int = 25
    meta_lr: float = 0.001
    update_batch_size: int = 5
    update_lr: float = 1e-3
    num_updates: int = 1
    # model
    norm: str = "batch_norm"
    num_filters: int = 64
    conv: bool = True
    max_pool: bool = False
    stop_grad: bool = False
    # logging, saving, testing
    log: bool = True
    logdir: str = "/tmp/data"
    resume: bool = True
    train: bool = True
    test_iter: int = -1
    test_set: bool = False
    train_update_batch_size: int = -1
    train_update_lr: float = -1
    # additions (not in the original)
    seed: int = 0
    data_dir: str = "./data"
    save_interval: int = 1000
    max_to_keep: int = 10
    num_query: int = -1
    num_test_tasks: int = 600
    test_seed: int = 1
    task_mode: str = "auto"
    task_pool: int = 200000
    init_checkpoint: str = ""
    pretrained: str = ""
    distribution: str = "none"
    cpu_devices: int = 0
    # names of the flags given on the command line (for contradiction checks)
    explicit: tuple = ()
    xla: Optional[bool] = None  # None: auto (maml_tf.autotune)
    step_times: str = ""

    # ------------------------------------------------------------ derived rules
    @property
    def classification(self):
        return self.datasource != "sinusoid"

    @property
    def test_num_updates(self):
        """Inner steps reported by evaluation (the original's test_num_updates)."""
        if self.datasource == "sinusoid":
            return 5 if self.train else 10
        if self.datasource == "miniimagenet":
            return 1 if self.train else 10
        return 10

    @property
    def reported_steps(self):
        """The inner steps whose test value the paper reports (Table 1 / Figure 3): 3 for
        Omniglot 5-way, 5 for 20-way, 10 for miniImageNet; 1 and 10 for sinusoid."""
        if self.datasource == "sinusoid":
            return (1, 10)
        if self.datasource == "miniimagenet":
            return (10,)
        return (3,) if self.num_classes <= 5 else (5,)

    @property
    def eval_num_updates(self):
        """The original evaluated max(test_num_updates, num_updates) steps."""
        return max(self.test_num_updates, self.num_updates)

    @property
    def num_classes_per_task(self):
        """N of the task data: 1 for sinusoid (the original's num_classes there)."""
        return self.num_classes if self.classification else 1

    @property
    def query_per_class(self):
        """Query examples per class: K, except 15 when meta-training on miniImageNet
        (the original sampled K + 15 images per class there, K of them support)."""
        if self.num_query > 0:
            return self.num_query
        if self.datasource == "miniimagenet" and self.train:
            return 15
        return self.update_batch_size

    @property
    def dim_input(self):
        if self.datasource == "sinusoid":
            return 3 if self.baseline == "oracle" else 1
        if self.datasource == "omniglot":
            return 28 * 28
        return 84 * 84 * 3

    @property
    def dim_output(self):
        return self.num_classes if self.classification else 1

    @property
    def total_iterations(self):
        return self.pretrain_iterations + self.metatrain_iterations

    @property
    def clip_value(self):
        """Meta-gradients are clipped to [-10, 10] for miniImageNet only, as the original."""
        return 10.0 if self.datasource == "miniimagenet" else None

    @property
    def effective_train_update_batch_size(self):
        return self.update_batch_size if self.train_update_batch_size == -1 else self.train_update_batch_size

    @property
    def effective_train_update_lr(self):
        return self.update_lr if self.train_update_lr == -1 else self.train_update_lr

    @property
    def exp_string(self):
        """The original's experiment folder name under ``logdir``."""
        s = (f"cls_{self.num_classes}.mbs_{self.meta_batch_size}"
             f".ubs_{self.effective_train_update_batch_size}.numstep{self.num_updates}"
             f".updatelr{self.effective_train_update_lr}")
        if self.num_filters != 64:
            s += f"hidden{self.num_filters}"
        if self.max_pool:
            s += "maxpool"
        if self.stop_grad:
            s += "stopgrad"
        if self.baseline:
            s += self.baseline
        s += {"batch_norm": "batchnorm", "layer_norm": "layernorm", "None": "nonorm"}[self.norm]
        if self.baseline is None and self.metatrain_iterations == 0 and self.pretrain_iterations > 0:
            # Deviation: the original gave the pretrained baseline the MAML run's
            # folder (so one resumed the other's checkpoints); keep them apart.
            s += "pretrain"
        return s

    @property
    def exp_dir(self):
        return os.path.join(self.logdir, self.exp_string)

    @property
    def test_csv_stem(self):
        """test_ubs{K}_stepsize{alpha}: the original's test output name (no extension)."""
        return f"test_ubs{self.update_batch_size}_stepsize{self.update_lr}"

    # ------------------------------------------------------------ checks
    def validate(self):
        """Raise UsageError (one line: the flag, the problem, the fix) on bad settings."""
        if self.datasource not in DATASOURCES:
            raise UsageError(f"--datasource={self.datasource!r} is unknown: use one of {', '.join(DATASOURCES)}")
        if self.norm not in ("batch_norm", "layer_norm", "None"):
            raise UsageError(f"--norm={self.norm!r} is unknown: use batch_norm, layer_norm or None")
        if self.baseline not in (None, "oracle"):
            raise UsageError(f"--baseline={self.baseline!r} is unknown: use oracle or leave it unset")
        if self.baseline == "oracle" and self.datasource != "sinusoid":
            raise UsageError("--baseline=oracle feeds the sinusoid's amplitude and phase: it only works with --datasource=sinusoid")
        for name in ("meta_batch_size", "update_batch_size", "num_test_tasks", "save_interval", "max_to_keep"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name}={getattr(self, name)} must be at least 1")
        if self.num_updates < 1:
            raise UsageError(f"--num_updates={self.num_updates} must be at least 1 (the meta-gradient goes through the last inner step)")
        if self.task_pool < 0:
            raise UsageError(f"--task_pool={self.task_pool} must be 0 (fresh tasks) or a pool size")
        if self.task_pool and self.task_pool < self.meta_batch_size and self.classification:
            raise UsageError(f"--task_pool={self.task_pool} is smaller than --meta_batch_size="
                             f"{self.meta_batch_size}: a meta-batch would repeat tasks; raise it or use 0")
        for name in ("pretrain_iterations", "metatrain_iterations"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name}={getattr(self, name)} must not be negative")
        if self.classification and self.num_classes < 2:
            raise UsageError(f"--num_classes={self.num_classes} must be at least 2 for {self.datasource} classification")
        if self.update_lr <= 0 or self.meta_lr < 0:
            raise UsageError("--update_lr must be positive and --meta_lr non-negative")
        if self.classification and self.conv and self.num_filters < 1:
            raise UsageError(f"--num_filters={self.num_filters} must be at least 1")
        if self.task_mode not in ("auto", "batched", "loop"):
            raise UsageError(f"--task_mode={self.task_mode!r} is unknown: use auto, batched or loop")
        if self.datasource == "sinusoid":
            given = [f"--{n}" for n in ("conv", "max_pool", "num_filters") if n in self.explicit]
            if self.max_pool and "--max_pool" not in given:
                given.append("--max_pool")
            if given:
                raise UsageError(f"{', '.join(given)} only apply to the image data sources: the sinusoid "
                                 f"network is the original's fc 40-40; drop {', '.join(given)} or use "
                                 f"--datasource=omniglot/miniimagenet")
        if self.pretrained and self.init_checkpoint:
            raise UsageError("--pretrained and --init_checkpoint both give the starting weights: keep one")
        if self.distribution not in ("none", "mirrored", "multi_worker"):
            raise UsageError(f"--distribution={self.distribution!r} is unknown: use none, mirrored or multi_worker")
        if self.cpu_devices and self.distribution == "none":
            raise UsageError("--cpu_devices splits the CPU for a tf.distribute strategy: add --distribution=mirrored")
        if self.cpu_devices < 0:
            raise UsageError(f"--cpu_devices={self.cpu_devices} must not be negative")
        if self.train and self.total_iterations == 0:
            raise UsageError("nothing to train: set --metatrain_iterations or --pretrain_iterations above 0, or --train=False to test")
        return self

    def resolved(self):
        """A copy with the original's in-place flag rewrites applied (oracle: all
        iterations become pre-training iterations)."""
        cfg = dataclasses.replace(self)
        if cfg.baseline == "oracle" and cfg.metatrain_iterations:
            cfg.pretrain_iterations += cfg.metatrain_iterations
            cfg.metatrain_iterations = 0
        return cfg
