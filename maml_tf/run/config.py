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
    # the meta-learner (maml_tf/methods.py) and MAML++'s components (maml_tf/maml.py)
    method: str = "maml"
    lslr: bool = False
    msl_iterations: int = 0
    bnwb: bool = False
    da_iterations: int = 0
    cosine_annealing: bool = False
    min_meta_lr: float = 1e-5
    nil_test: bool = False
    transductive: bool = True
    reptile_inner: str = "sgd"
    # how the meta-gradient flows back (maml_tf/engines.py)
    meta_gradient: str = "nested"
    truncate_steps: int = -1
    imaml_lambda: float = 1.0
    cg_steps: int = 5
    cg_damping: float = 0.0
    lam_damping: float = 0.0
    es_samples: int = 16
    es_sigma: float = 0.01
    dropgrad: float = 0.0
    dropgrad_type: str = "bernoulli"
    init_checkpoint: str = ""
    pretrained: str = ""
    distribution: str = "none"
    cpu_devices: int = 0
    # names of the flags given on the command line (for contradiction checks)
    explicit: tuple = ()
    xla: Optional[bool] = None  # None: auto (maml_tf.run.autotune)
    step_times: str = ""
    fuse_steps: bool = True  # sinusoid: the steps between two summaries in one compiled call
    precision: str = "float32"  # 'bfloat16': the conv nets' products in bfloat16 (opt-in)

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
    def learned_step_sizes(self):
        """What learned the inner step sizes, for exactly ``num_updates`` steps: 'Meta-SGD' (one
        per weight entry), 'LSLR (MAML++)' (one per layer and step), or '' (a fixed step)."""
        if self.method == "metasgd":
            return "Meta-SGD"
        return "LSLR (MAML++)" if self.lslr else ""

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
        s += self.method_suffix + self.engine_suffix
        if self.baseline is None and self.metatrain_iterations == 0 and self.pretrain_iterations > 0:
            # Deviation: the original gave the pretrained baseline the MAML run's
            # folder (so one resumed the other's checkpoints); keep them apart.
            s += "pretrain"
        return s

    @property
    def method_suffix(self):
        """Log-folder suffix of a method or MAML++ component (empty for MAML)."""
        s = "" if self.method == "maml" else f".{self.method}"
        if self.method == "reptile" and self.reptile_inner != "sgd":
            s += f"{self.reptile_inner}inner"
        s += ".lslr" if self.lslr else ""
        s += f".msl{self.msl_iterations}" if self.msl_iterations else ""
        s += ".bnwb" if self.bnwb else ""
        s += f".da{self.da_iterations}" if self.da_iterations else ""
        s += f".ca{self.min_meta_lr}" if self.cosine_annealing else ""
        return s

    @property
    def engine_options(self):
        """Keyword options of maml_tf.core.engines.Options given by the flags."""
        out = {}
        if self.truncate_steps >= 0:
            out["truncate_steps"] = self.truncate_steps
        if self.meta_gradient == "implicit":
            out.update(imaml_lambda=self.imaml_lambda, cg_steps=self.cg_steps,
                       cg_damping=self.cg_damping, lam_damping=self.lam_damping)
        if self.meta_gradient == "es":
            out.update(es_samples=self.es_samples, es_sigma=self.es_sigma)
        if self.dropgrad:
            out.update(dropgrad=self.dropgrad, dropgrad_type=self.dropgrad_type)
        return out

    @property
    def engine_suffix(self):
        """Log-folder suffix of a non-default meta-gradient (empty for the original's)."""
        s = ""
        if self.meta_gradient not in ("nested", "checkpointed"):  # checkpointed: same numbers as nested
            s += f".mg{self.meta_gradient}"
            if self.meta_gradient == "truncated":
                s += str(self.truncate_steps)
            elif self.meta_gradient == "implicit":
                s += f"lam{self.imaml_lambda}cg{self.cg_steps}"
                if self.cg_damping or self.lam_damping:  # another system: a folder of its own
                    s += f"damp{self.cg_damping}_{self.lam_damping}"
            elif self.meta_gradient == "es":
                s += f"n{self.es_samples}s{self.es_sigma}"
        if self.dropgrad:
            s += f".dropgrad{self.dropgrad_type[0]}{self.dropgrad}"
        if self.precision != "float32":  # another computation: a folder of its own
            s += ".bf16"
        return s

    @property
    def exp_dir(self):
        return os.path.join(self.logdir, self.exp_string)

    @property
    def test_csv_stem(self):
        """test_ubs{K}_stepsize{alpha}: the original's test output name (no extension)."""
        stem = f"test_ubs{self.update_batch_size}_stepsize{self.update_lr}"
        if self.nil_test:
            stem += "_nil"
        if not self.transductive:
            stem += "_nontransductive"
        return stem

    @property
    def test_csv_path(self):
        """Where the test writes its CSV: exp_dir/test_csv_stem.csv (the .pkl sits beside it)."""
        return os.path.join(self.exp_dir, self.test_csv_stem + ".csv")

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
        if self.precision not in ("float32", "bfloat16"):
            raise UsageError(f"--precision={self.precision!r} is unknown: use float32 or bfloat16")
        if self.precision == "bfloat16" and not (self.classification and self.conv):
            raise UsageError("--precision=bfloat16 rounds the conv nets' convolutions and output layer; "
                             "the fc nets' products are too small to gain from it: drop --precision")
        if self.datasource == "sinusoid":
            given = [f"--{n}" for n in ("conv", "max_pool", "num_filters") if n in self.explicit]
            if self.max_pool and "--max_pool" not in given:
                given.append("--max_pool")
            if given:
                raise UsageError(f"{', '.join(given)} only apply to the image data sources: the sinusoid "
                                 f"network is the original's fc 40-40; drop {', '.join(given)} or use "
                                 f"--datasource=omniglot/miniimagenet")
        from maml_tf.core import DROPGRAD_TYPES, ENGINES
        if self.meta_gradient not in ENGINES:
            raise UsageError(f"--meta_gradient={self.meta_gradient!r} is unknown: use one of {', '.join(ENGINES)}")
        if self.meta_gradient == "truncated" and not 0 <= self.truncate_steps <= self.num_updates:
            raise UsageError(f"--meta_gradient=truncated needs --truncate_steps between 0 and --num_updates="
                             f"{self.num_updates} (got {self.truncate_steps})")
        if self.meta_gradient != "truncated" and self.truncate_steps >= 0 and "truncate_steps" in self.explicit:
            raise UsageError("--truncate_steps applies to --meta_gradient=truncated: add it, or drop --truncate_steps")
        if not 0 <= self.dropgrad < 1:
            raise UsageError(f"--dropgrad={self.dropgrad} must be in [0, 1)")
        if self.dropgrad_type not in DROPGRAD_TYPES:
            raise UsageError(f"--dropgrad_type={self.dropgrad_type!r}: use bernoulli or gaussian")
        if self.meta_gradient == "implicit" and (self.imaml_lambda <= 0 or self.cg_steps < 1):
            raise UsageError("--imaml_lambda must be positive and --cg_steps at least 1")
        if self.cg_damping < 0 or self.lam_damping < 0:
            raise UsageError(f"--cg_damping={self.cg_damping:g} and --lam_damping={self.lam_damping:g} "
                             f"must be at least 0 (0 and 0: the undamped iMAML system)")
        if (self.cg_damping or self.lam_damping) and self.meta_gradient != "implicit":
            raise UsageError("--cg_damping and --lam_damping damp iMAML's system: they need "
                             "--meta_gradient=implicit")
        if self.meta_gradient == "es" and (self.es_samples < 1 or self.es_sigma <= 0):
            raise UsageError("--es_samples must be at least 1 and --es_sigma positive")
        self._validate_method()
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

    def _validate_method(self):
        from maml_tf.methods import METHODS
        if self.method not in METHODS:
            raise UsageError(f"--method={self.method!r} is unknown: use one of {', '.join(METHODS)}")
        mg = self.meta_gradient
        learned_lr = bool(self.learned_step_sizes)
        if self.method == "reptile":
            extras = [f for f, on in (("--meta_gradient", mg != "nested"), ("--lslr", self.lslr),
                                      ("--msl_iterations", self.msl_iterations), ("--bnwb", self.bnwb),
                                      ("--da_iterations", self.da_iterations), ("--dropgrad", self.dropgrad),
                                      ("--stop_grad", self.stop_grad)) if on]
            if extras:
                raise UsageError(f"{', '.join(extras)} do not apply to --method=reptile (it takes no gradient "
                                 f"through the inner loop): drop them")
        if self.reptile_inner not in ("sgd", "adam"):
            raise UsageError(f"--reptile_inner={self.reptile_inner!r}: use sgd or adam")
        if self.reptile_inner != "sgd" and self.method != "reptile":
            raise UsageError("--reptile_inner applies to --method=reptile")
        if mg == "implicit" and (self.method != "maml" or self.lslr or self.msl_iterations or self.bnwb):
            raise UsageError("--meta_gradient=implicit is the implicit gradient of MAML's proximal inner problem "
                             "(one fixed step size, every weight adapted, one loss): use it with --method=maml "
                             "and without --lslr/--msl_iterations/--bnwb")
        if mg == "es" and (learned_lr or self.msl_iterations):
            raise UsageError("--meta_gradient=es perturbs theta and the normalisation offsets, not learned step "
                             "sizes or the multi-step loss: drop --method=metasgd/--lslr/--msl_iterations")
        if mg == "checkpointed" and self.msl_iterations:
            raise UsageError("--msl_iterations (multi-step loss) runs with --meta_gradient=nested or truncated")
        if self.nil_test and (self.method != "anil" or not self.classification):
            raise UsageError("--nil_test is ANIL's no-inner-loop evaluation: use it with --method=anil on "
                             "omniglot or miniimagenet")
        if self.bnwb and self.norm != "batch_norm":
            raise UsageError("--bnwb gives every inner step its own batch-norm parameters: it needs --norm=batch_norm")
        if self.bnwb and self.init_checkpoint:
            raise UsageError("--bnwb models have per-step batch-norm parameters the original's checkpoints lack: "
                             "drop --init_checkpoint or --bnwb")
        if self.da_iterations and self.stop_grad:
            raise UsageError("--da_iterations anneals first to second order: it contradicts --stop_grad=True")
        if self.msl_iterations < 0 or self.da_iterations < 0:
            raise UsageError("--msl_iterations and --da_iterations must not be negative")

    def resolved(self):
        """A copy with the original's in-place flag rewrites applied (oracle: all
        iterations become pre-training iterations)."""
        cfg = dataclasses.replace(self)
        if cfg.baseline == "oracle" and cfg.metatrain_iterations:
            cfg.pretrain_iterations += cfg.metatrain_iterations
            cfg.metatrain_iterations = 0
        return cfg


# ---------------------------------------------------------------- main.py-style flags without absl
_TRUE = {"true", "t", "1", "yes"}
_FALSE = {"false", "f", "0", "no"}


def _field_types():
    """{Config field: bool/int/float/str} from the annotations (Optional[X] -> X)."""
    out = {}
    for f in dataclasses.fields(Config):
        kind = f.type
        args = [a for a in getattr(kind, "__args__", ()) if a is not type(None)]
        if len(args) == 1:
            kind = args[0]
        out[f.name] = kind if kind in (bool, int, float, str) else str
    return out


def _convert(name, value, kind):
    if kind is bool:
        if isinstance(value, bool):
            return value
        v = str(value).lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise UsageError(f"--{name}={value}: not a boolean (use True or False)")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"--{name}={value}: not a valid {kind.__name__}") from None


def parse_flags(args, known=None):
    """main.py-style arguments (``--name=value``, ``--flag``, ``--noflag``) -> (Config field
    values, leftover arguments).  ``known`` lists extra flag names to leave in leftovers."""
    types = _field_types()
    values, rest = {}, []
    for a in args:
        if not a.startswith("--"):
            rest.append(a)
            continue
        body = a[2:]
        name, eq, value = body.partition("=")
        if name in types:
            if not eq:
                if types[name] is not bool:
                    raise UsageError(f"--{name} needs a value: --{name}=VALUE")
                value = True
            values[name] = _convert(name, value, types[name])
        elif not eq and name.startswith("no") and types.get(name[2:]) is bool:
            values[name[2:]] = False
        else:
            rest.append(a)
    return values, rest


def config_from_flags(values):
    """A validated, resolved Config from {flag: value} (strings or typed values)."""
    types = _field_types()
    bad = [k for k in values if k not in types]
    if bad:
        raise UsageError(f"--{bad[0]} is not a main.py flag")
    cfg = Config(**{k: _convert(k, v, types[k]) for k, v in values.items()})
    return cfg.validate().resolved()
