"""The paper's supervised experiments (Finn et al. 2017, Section 5.1-5.2, Table 1, Figures 2-3):
exact main.py commands, the test column the paper reports, and the paper's numbers.

Every experiment has a full-length variant (the paper's iterations, the original
README's flags) and a short CPU-budget variant (fewer iterations, its own log
folder ``<logroot>/budget/<group>``); both are tested with the same protocol
(``--train=False``, 600 tasks, 10 inner steps, the test set for images).

Where the README and the paper disagree, the paper wins and ``note`` says so:
sinusoid MAML uses alpha = 0.01 (the README left the default 0.001). The
miniImageNet 5-shot meta-batch is the README's 4 (the paper's appendix says 2).

Also here: :func:`parse_flags` / :func:`config_from_flags`, turning main.py-style
``--name=value`` arguments into a :class:`~maml_tf.run.config.Config` without absl,
for the result, figure and model-selection commands.
"""
import dataclasses
import fnmatch
import os
import shlex
import sys
from typing import Dict, Optional, Tuple

from maml_tf.run.config import UsageError, config_from_flags, parse_flags  # noqa: F401  (parse_flags re-exported)


def parse_tool_flags(argv, options):
    """main.py flags plus a paper tool's own ``--name=value`` options.

    options: {name: (type, default)}.  Returns (main.py flag values, {name: value});
    raises UsageError naming an unknown argument or a value of the wrong type."""
    values, rest = parse_flags(argv)
    opts = {name: default for name, (_, default) in options.items()}
    for a in rest:
        name, eq, v = a[2:].partition("=") if a.startswith("--") else (a, "", "")
        if name not in options or not eq:
            raise UsageError(f"unknown argument {a}: give main.py flags and "
                             f"{', '.join('--' + n for n in options)} as --name=value")
        kind = options[name][0]
        try:
            opts[name] = kind(v)
        except ValueError:
            raise UsageError(f"--{name}={v} is not a valid {kind.__name__}") from None
    return values, opts


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The authors' released miniImageNet 5-way 1-shot checkpoint, relative to the repository root
# (reproduce/run.py resolves it from there).
RELEASED_CHECKPOINT = "../shared/data/cbfinn_maml_checkpoint/miniimagenet1shot/model59000"

PAPER = "Finn, Abbeel, Levine (2017), Model-Agnostic Meta-Learning, ICML"


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One row of the paper's results.

    group: log folder under the log root (the README's logs/<group>/).
    train_flags: main.py flags of the full-length training command (no --logdir).
    test_flags: flags added for the test command (--train=False ...).
    iterations_flag: which flag holds the length (metatrain_ or pretrain_iterations).
    columns: test-CSV columns reported (inner steps): the paper's test column, or
      the steps shown for sinusoid (1, 5, 10).
    paper: {column: (mean, ci95)} in the CSV's unit (accuracy as a fraction, MSE), or
      None where the paper gives only a figure.
    """
    name: str
    title: str
    group: str
    train_flags: Tuple[Tuple[str, object], ...]
    test_flags: Tuple[Tuple[str, object], ...]
    full_iterations: int
    budget_iterations: int
    columns: Tuple[int, ...]
    metric: str  # 'accuracy' or 'mse'
    paper: Optional[Dict[int, Tuple[float, float]]] = None
    paper_ref: str = ""
    paper_digits: int = 1  # decimals the paper printed (percent)
    trains: bool = True
    note: str = ""

    @property
    def iterations_flag(self):
        flags = dict(self.train_flags)
        if flags.get("metatrain_iterations", 1) == 0 and flags.get("pretrain_iterations", 0) > 0:
            return "pretrain_iterations"
        return "metatrain_iterations"

    def flags(self, budget=False, test=False, logroot="logs", data_dir=None, extra=()):
        """Ordered (name, value) flags of the train (or test) command."""
        out = dict(self.train_flags)
        if self.trains:
            out[self.iterations_flag] = self.budget_iterations if budget else self.full_iterations
        out["logdir"] = self.logdir(logroot, budget)
        if data_dir is not None and out.get("datasource") != "sinusoid":
            out["data_dir"] = data_dir
        if test:
            out.update(dict(self.test_flags))
        out.update(dict(extra))
        return list(out.items())

    def logdir(self, logroot="logs", budget=False):
        budget = budget and self.trains
        return os.path.join(logroot, "budget", self.group) if budget else os.path.join(logroot, self.group)

    def command(self, budget=False, test=False, logroot="logs", data_dir=None, python="python",
                main="main.py", extra=()):
        """The command line as a list of strings."""
        return [python, main] + [f"--{k}={_flag_str(v)}"
                                 for k, v in self.flags(budget, test, logroot, data_dir, extra)]

    def config(self, budget=False, test=True, logroot="logs", data_dir=None, extra=()):
        """The Config main.py builds for this command (validated, resolved)."""
        return config_from_flags(dict(self.flags(budget, test, logroot, data_dir, extra)))

    @property
    def length(self):
        return self.full_iterations


def _flag_str(v):
    if isinstance(v, bool):
        return "True" if v else "False"
    return str(v)


def shell_join(cmd):
    return " ".join(shlex.quote(c) for c in cmd)


# ------------------------------------------------------------------------------ registry
def _sinusoid(name, title, train, test, paper_ref, note=""):
    return Experiment(name=name, title=title, group="sine", train_flags=tuple(train),
                      test_flags=tuple(test), full_iterations=70000, budget_iterations=5000,
                      columns=(1, 5, 10), metric="mse", paper=None, paper_ref=paper_ref, note=note)


_SINE_MAML = (("datasource", "sinusoid"), ("metatrain_iterations", 70000), ("norm", "None"),
              ("update_batch_size", 10), ("update_lr", 0.01))
_SINE_PRE = (("datasource", "sinusoid"), ("pretrain_iterations", 70000), ("metatrain_iterations", 0),
             ("norm", "None"), ("update_batch_size", 10))
_SINE_ORACLE = _SINE_PRE[:4] + (("update_batch_size", 10), ("baseline", "oracle"))
_SINE_NOTE = ("alpha=0.01 as the paper's Section 5.1 (the README's command left the default 0.001); "
              "one model meta-trained with K=10, evaluated with K=5 and K=10")
_FIG3 = "Fig. 3 (no numbers)"

_OMNI_5 = (("datasource", "omniglot"), ("metatrain_iterations", 60000), ("meta_batch_size", 32),
           ("update_lr", 0.4), ("num_updates", 1))
_OMNI_20 = (("datasource", "omniglot"), ("metatrain_iterations", 60000), ("meta_batch_size", 16),
            ("num_classes", 20), ("update_lr", 0.1), ("num_updates", 5))
_MINI = (("datasource", "miniimagenet"), ("metatrain_iterations", 60000), ("meta_batch_size", 4),
         ("update_lr", 0.01), ("num_updates", 5), ("num_classes", 5), ("num_filters", 32),
         ("max_pool", True))
_TEST_IMG = (("train", False), ("test_set", True))


_FO_REF = "Nichol et al. 2018, Table 2"


def _img(name, title, group, base, k, extra, paper, column, budget, note="", digits=1, paper_ref="Table 1"):
    flags = list(base)
    flags.insert(3, ("update_batch_size", k))
    flags += list(extra)
    return Experiment(name=name, title=title, group=group, train_flags=tuple(flags),
                      test_flags=_TEST_IMG, full_iterations=60000, budget_iterations=budget,
                      columns=(column,), metric="accuracy",
                      paper={column: paper}, paper_ref=paper_ref, paper_digits=digits, note=note)


EXPERIMENTS = [
    _sinusoid("sinusoid-maml-k5", "Sinusoid, MAML, K=5", _SINE_MAML,
              (("train", False), ("update_batch_size", 5), ("train_update_batch_size", 10)),
              _FIG3, _SINE_NOTE),
    _sinusoid("sinusoid-maml-k10", "Sinusoid, MAML, K=10", _SINE_MAML, (("train", False),),
              _FIG3, _SINE_NOTE),
    _sinusoid("sinusoid-pretrained-k5", "Sinusoid, pretrained, K=5, step 0.01", _SINE_PRE,
              (("train", False), ("update_batch_size", 5), ("train_update_batch_size", 10),
               ("update_lr", 0.01), ("train_update_lr", 0.001)),
              _FIG3, "pre-trained on all tasks (the README's command), fine-tuned with step 0.01 (Figure 2/3 legend)"),
    _sinusoid("sinusoid-pretrained-k10", "Sinusoid, pretrained, K=10, step 0.02", _SINE_PRE,
              (("train", False), ("update_lr", 0.02), ("train_update_lr", 0.001)),
              _FIG3, "fine-tuned with step 0.02 (Figure 2/3 legend)"),
    _sinusoid("sinusoid-oracle-k5", "Sinusoid, oracle, K=5", _SINE_ORACLE,
              (("train", False), ("update_batch_size", 5), ("train_update_batch_size", 10)),
              _FIG3, "receives amplitude and phase as inputs (the README's command); tested with its "
              "default step 0.001"),
    _sinusoid("sinusoid-oracle-k10", "Sinusoid, oracle, K=10", _SINE_ORACLE, (("train", False),),
              _FIG3, "receives amplitude and phase as inputs (the README's command); tested with its "
              "default step 0.001"),
    _img("omniglot-5way-1shot", "Omniglot 5-way 1-shot", "omniglot5way", _OMNI_5, 1, (),
         (0.987, 0.004), 3, 2000),
    _img("omniglot-5way-5shot", "Omniglot 5-way 5-shot", "omniglot5way", _OMNI_5, 5, (),
         (0.999, 0.001), 3, 1000, "not in the README; its 1-shot command with --update_batch_size=5"),
    _img("omniglot-20way-1shot", "Omniglot 20-way 1-shot", "omniglot20way", _OMNI_20, 1, (),
         (0.958, 0.003), 5, 500),
    _img("omniglot-20way-5shot", "Omniglot 20-way 5-shot", "omniglot20way", _OMNI_20, 5, (),
         (0.989, 0.002), 5, 300, "not in the README; its 1-shot command with --update_batch_size=5"),
    # First-order MAML on Omniglot: the paper's Table 1 has no such row; the numbers are
    # the ones Nichol, Achiam and Schulman (2018, "On First-Order Meta-Learning
    # Algorithms", Table 2) report for first-order MAML with transduction, the original's
    # protocol (batch statistics over the query set).
    _img("omniglot-5way-1shot-firstorder", "Omniglot 5-way 1-shot, first-order approx.", "omniglot5way",
         _OMNI_5, 1, (("stop_grad", True),), (0.983, 0.005), 3, 2000, paper_ref=_FO_REF),
    _img("omniglot-5way-5shot-firstorder", "Omniglot 5-way 5-shot, first-order approx.", "omniglot5way",
         _OMNI_5, 5, (("stop_grad", True),), (0.992, 0.002), 3, 1000, paper_ref=_FO_REF),
    _img("omniglot-20way-1shot-firstorder", "Omniglot 20-way 1-shot, first-order approx.", "omniglot20way",
         _OMNI_20, 1, (("stop_grad", True),), (0.894, 0.005), 5, 500, paper_ref=_FO_REF),
    _img("omniglot-20way-5shot-firstorder", "Omniglot 20-way 5-shot, first-order approx.", "omniglot20way",
         _OMNI_20, 5, (("stop_grad", True),), (0.979, 0.001), 5, 300, paper_ref=_FO_REF),
    _img("omniglot-5way-1shot-noconv", "Omniglot 5-way 1-shot, MAML no conv", "omniglot5way_noconv",
         _OMNI_5, 1, (("conv", False),), (0.897, 0.011), 3, 2000,
         "fc net 256-128-64-64 (--conv=False); same settings as the conv 5-way model (paper appendix A.1)"),
    _img("omniglot-5way-5shot-noconv", "Omniglot 5-way 5-shot, MAML no conv", "omniglot5way_noconv",
         _OMNI_5, 5, (("conv", False),), (0.975, 0.006), 3, 1000,
         "fc net 256-128-64-64 (--conv=False); same settings as the conv 5-way model (paper appendix A.1)"),
    _img("miniimagenet-5way-1shot", "MiniImagenet 5-way 1-shot", "miniimagenet1shot", _MINI, 1, (),
         (0.4870, 0.0184), 10, 300, digits=2),
    _img("miniimagenet-5way-5shot", "MiniImagenet 5-way 5-shot", "miniimagenet5shot", _MINI, 5, (),
         (0.6311, 0.0092), 10, 200,
         "meta-batch 4 as the README (the paper's appendix says 2 for 5-shot)", digits=2),
    _img("miniimagenet-5way-1shot-firstorder", "MiniImagenet 5-way 1-shot, first-order approx.",
         "miniimagenet1shot", _MINI, 1, (("stop_grad", True),), (0.4807, 0.0175), 10, 300, digits=2),
    _img("miniimagenet-5way-5shot-firstorder", "MiniImagenet 5-way 5-shot, first-order approx.",
         "miniimagenet5shot", _MINI, 5, (("stop_grad", True),), (0.6315, 0.0091), 10, 200,
         "meta-batch 4 as the README (the paper's appendix says 2 for 5-shot)", digits=2),
    dataclasses.replace(
        _img("miniimagenet-5way-1shot-released", "MiniImagenet 5-way 1-shot, the authors' checkpoint",
             "miniimagenet1shot_released", _MINI, 1, (), (0.4870, 0.0184), 10, 0,
             "no training: tests the authors' released model59000 (--init_checkpoint)", digits=2),
        trains=False, full_iterations=59001, budget_iterations=59001,
        test_flags=_TEST_IMG + (("init_checkpoint", RELEASED_CHECKPOINT),)),
]

BY_NAME = {e.name: e for e in EXPERIMENTS}


def select(patterns):
    """Experiments whose name matches any of the shell patterns (e.g. 'sinusoid-*')."""
    out = []
    for p in patterns:
        hits = [e for e in EXPERIMENTS if fnmatch.fnmatchcase(e.name, p)]
        if not hits:
            raise UsageError(f"no experiment matches {p!r}: see python reproduce/run.py --list")
        out += [e for e in hits if e not in out]
    return out


# ------------------------------------------------------------------------------ flags -> Config
def python_main():
    """(python executable, path of main.py) for commands run from here."""
    return sys.executable, os.path.join(REPO_ROOT, "main.py")
