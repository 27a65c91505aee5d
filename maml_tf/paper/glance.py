"""The results at a glance: every cell of the paper's tables beside ours, as the README's table
and a figure.  ``python -m maml_tf.paper.figures --glance --out docs --readme README.md``.

A cell is an experiment of :mod:`maml_tf.paper.experiments` (the paper's number, its test
column) and what stands for it here: the published model of ``pretrained/`` whose manifest
holds our test result and how far its run got, or, where no model is published, why not
(a run not yet started, or one that cannot run here).  So the table and the figure are made
from the manifests alone and change when a model is republished: rerun the command then
(``tests/test_docs.py`` checks that the README holds the table the manifests give).

Status of a cell, decided in :func:`status` alone:

* ``reproduced``: the run reached its full length and our 95% interval overlaps the paper's;
* ``outside the paper's interval``: full length, and the intervals do not overlap;
* ``short of full length``: the run stopped before its usage line's iterations (its
  manifest's ``run_iterations``); the percentage says how far it got;
* ``figure only``: the paper gives a figure, no number (sinusoid);
* ``not started`` / ``not runnable here``: no model, with the reason.
"""
import dataclasses
import os
from typing import Optional

from maml_tf.run import pretrained

BEGIN, END = "<!-- results-at-a-glance: begin -->", "<!-- results-at-a-glance: end -->"

_NO_IMAGES = "not runnable here: no miniImageNet images"
_QUEUED = "not started: queued behind the runs above"
_NOT_RUN = "not run yet"


@dataclasses.dataclass(frozen=True)
class Cell:
    experiment: str          # name in maml_tf.paper.experiments
    model: Optional[str]     # published model in pretrained/, or None
    why_not: str = ""        # where no model is published


CELLS = (
    Cell("sinusoid-maml-k10", "sinusoid-k10"),
    Cell("omniglot-5way-1shot", "omniglot5w1s"),
    Cell("omniglot-5way-5shot", "omniglot5w5s"),
    Cell("omniglot-20way-1shot", "omniglot20w1s"),
    Cell("omniglot-20way-5shot", None, _QUEUED),
    Cell("omniglot-5way-1shot-firstorder", "omniglot5w1s-first-order"),
    Cell("omniglot-5way-5shot-firstorder", None, _QUEUED),
    Cell("omniglot-20way-1shot-firstorder", None, _QUEUED),
    Cell("omniglot-20way-5shot-firstorder", None, _QUEUED),
    Cell("omniglot-5way-1shot-noconv", None, _NOT_RUN),
    Cell("omniglot-5way-5shot-noconv", None, _NOT_RUN),
    Cell("miniimagenet-5way-1shot", None, _NO_IMAGES),
    Cell("miniimagenet-5way-5shot", None, _NO_IMAGES),
    Cell("miniimagenet-5way-1shot-firstorder", None, _NO_IMAGES),
    Cell("miniimagenet-5way-5shot-firstorder", None, _NO_IMAGES),
    Cell("miniimagenet-5way-1shot-released", None, _NO_IMAGES),
)


@dataclasses.dataclass
class Row:
    """One cell, resolved: the experiment, its manifest (None without a model) and status."""
    cell: Cell
    experiment: object
    manifest: Optional[dict]
    status: str

    @property
    def paper(self):
        """(mean, ci95) in the CSV's unit at the paper's column, or None (figure only)."""
        e = self.experiment
        return None if not e.paper else e.paper[e.columns[0]]

    @property
    def ours(self):
        """(mean, ci95) of our test at the manifest's column, or None."""
        if self.manifest is None:
            return None
        t = self.manifest["test"]
        return t["mean"], t["ci95"]


def status(paper, ours, reached, total, why_not=""):
    """The one word (or phrase) a cell's status column shows; see the module docstring."""
    if ours is None:
        return why_not
    if reached < total:
        return f"short of full length ({100 * reached / total:.0f}%)"
    if paper is None:
        return "figure only"
    (pm, pc), (om, oc) = paper, ours
    return "reproduced" if abs(om - pm) <= pc + oc else "outside the paper's interval"


def rows(manifests=None, cells=CELLS):
    """The resolved cells; ``manifests``: {name: manifest} (default: pretrained/'s)."""
    from maml_tf.paper.experiments import BY_NAME
    if manifests is None:
        manifests = {n: pretrained.read_manifest(n) for n in pretrained.list_names()}
    out = []
    for cell in cells:
        m = manifests.get(cell.model) if cell.model else None
        if cell.model and m is None:
            raise ValueError(f"{cell.experiment}: no published model {cell.model!r} in pretrained/")
        row = Row(cell, BY_NAME[cell.experiment], m, "")
        reached, total = pretrained.run_length(m) if m else (0, 0)
        row.status = status(row.paper, row.ours, reached, total, cell.why_not)
        out.append(row)
    return out


# ------------------------------------------------------------------------------ the table
def _value(mean, ci, metric, digits):
    if metric == "mse":
        return f"MSE {mean:.3f} ± {ci:.3f}"
    return f"{100 * mean:.{digits}f} ± {100 * ci:.{digits}f}%"


def _iterations(row):
    if row.manifest is None:
        return "—"
    reached, total = pretrained.run_length(row.manifest)
    text = f"{reached:,}" if reached >= total else f"{reached:,} of {total:,}"
    if row.manifest["iterations"] != reached:  # model selection took an earlier checkpoint
        text += f" (selected: {row.manifest['checkpoint']})"
    return text


def markdown(table_rows):
    """The README's table: cell | paper | maml-tf | iterations | model | status."""
    lines = ["| cell | paper | maml-tf (600 test tasks) | iterations | model | status |",
             "|---|---|---|---|---|---|"]
    for r in table_rows:
        e = r.experiment
        steps = f" after {r.manifest['test']['inner_steps']} steps" if r.manifest and e.metric == "mse" else ""
        paper = (f"{_value(*r.paper, e.metric, e.paper_digits)}" if r.paper else e.paper_ref)
        if r.paper and e.paper_ref != "Table 1":
            paper += f" ({e.paper_ref})"
        ours = "—" if r.ours is None else _value(*r.ours, e.metric, 2) + steps
        model = f"`{r.cell.model}`" if r.manifest else "—"
        lines.append(f"| {e.title} | {paper} | {ours} | {_iterations(r)} | {model} | {r.status} |")
    return "\n".join(lines)


def replace_in(text, table):
    """``text`` with the block between the BEGIN and END markers replaced by ``table``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"no {BEGIN} ... {END} block to replace")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def block_in(text):
    """The table between the markers of ``text`` (None if there are none)."""
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


# ------------------------------------------------------------------------------ the figure
COLOURS = {"reproduced": "tab:green", "short": "tab:orange", "outside": "tab:red"}


def _colour(status_text):
    for key, colour in COLOURS.items():
        if status_text.startswith(key):
            return colour
    return "tab:red"


def figure(table_rows, path, pyplot):
    """Paper against maml-tf per classification cell, 95% intervals drawn; one panel per data
    set (their accuracies lie far apart); each row's result and status written beside it."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory
    panels = [("Omniglot", [r for r in table_rows if r.experiment.name.startswith("omniglot")]),
              ("miniImageNet", [r for r in table_rows if r.experiment.name.startswith("miniimagenet")])]
    heights = [len(p[1]) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 0.4 * sum(heights) + 2.4),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (title, rs) in zip(axes[:, 0], panels):
        values = [100 * (v[0] + s * v[1]) for r in rs for v in (r.paper, r.ours) if v is not None
                  for s in (-1, 1)]
        lo, hi = min(values) - 1.5, min(100.5, max(values) + 1.0)
        side = blended_transform_factory(ax.transAxes, ax.transData)
        for y, r in enumerate(reversed(rs)):
            pm, pc = r.paper
            ax.errorbar(100 * pm, y + 0.13, xerr=100 * pc, fmt="s", color="black", mfc="white",
                        ms=6, capsize=3)
            if r.ours is not None:
                om, oc = r.ours
                ax.errorbar(100 * om, y - 0.13, xerr=100 * oc, fmt="o", color=_colour(r.status),
                            ms=6, capsize=3)
                text, colour = f"{100 * om:.2f} ± {100 * oc:.2f}%: {r.status}", _colour(r.status)
            else:
                text, colour = r.status.split(":")[0], "grey"
            ax.text(1.02, y, text, transform=side, va="center", fontsize=8, color=colour)
        ax.set_yticks(range(len(rs)))
        ax.set_yticklabels([r.experiment.title.replace(f"{title} ", "").replace("MiniImagenet ", "")
                            for r in reversed(rs)], fontsize=8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(-0.7, len(rs) - 0.3)
        ax.set_title(f"{title}: meta-test accuracy (%), 95% intervals", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].legend(handles=[
        Line2D([], [], marker="s", color="black", mfc="white", ls="", label="paper"),
        Line2D([], [], marker="o", color=COLOURS["reproduced"], ls="", label="maml-tf, reproduced"),
        Line2D([], [], marker="o", color=COLOURS["short"], ls="", label="maml-tf, short of full length")],
        fontsize=7, loc="lower left")
    fig.subplots_adjust(left=0.24, right=0.68, top=0.95, bottom=0.05, hspace=0.3)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
