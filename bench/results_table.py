#!/usr/bin/env python
"""Markdown table from the summary lines of ``meta_step.py --compare`` runs.

    python bench/meta_step.py --config sinusoid --compare > runs.jsonl   # ... for each cell
    python bench/results_table.py runs.jsonl [more.jsonl ...]
    python bench/results_table.py --peak runs.jsonl [more.jsonl ...]

Reads every JSON line with ``"summary": true`` (other lines, such as
``bench/main_speed.py``'s, are skipped) and prints one row per
(config, order): our median sec/iter, each anchor's, the ratio to the fastest
anchor, our first call (compile) time, and peak RSS (ours / the fastest anchor's).

``--peak``: instead, one row per maml-tf line (``"stack": "maml-tf"``, with or without
``--compare``): the step's time, its products' floating-point work counted from the
graph, the share of the other (elementwise) work, the products' rate, the machine's
matrix-product peak measured in the same run and the percent of it.
"""
import json
import sys

ORDER = ["sinusoid", "omniglot5w1s", "omniglot20w1s", "omniglot5w5s", "omniglot20w5s", "mini5w1s", "mini5w5s"]


def fmt(sec):
    return f"{sec * 1e3:.3g} ms" if sec < 0.1 else f"{sec:.3g} s"


def _lines(paths, keep):
    rows = []
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    d = json.loads(line)
                    if keep(d):
                        rows.append(d)
    rows.sort(key=lambda d: (ORDER.index(d["config"]) if d["config"] in ORDER else 99,
                             d["first_order"]))
    return rows


def _flops(n):
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} FLOP"


def peak_table(paths):
    """The percent-of-peak table of the maml-tf lines (see the module docstring)."""
    rows = _lines(paths, lambda d: d.get("stack") == "maml-tf" and d.get("percent_of_peak") is not None)
    print("| config | order | path | s / step | products / step | elementwise share | product rate | "
          "peak (float32) | % of peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in rows:
        share = 1 - d["product_flops_per_step"] / d["flops_per_step"]
        intra, inter = d.get("tf_intra_inter_threads", [0, 0])
        # (*): one core's peak against a step that may use more (one intra-op thread, lines
        # from before the peak ran a chain per inter-op thread).
        one = " (*)" if intra == 1 and inter > 1 and d.get("peak_chains", 1) == 1 else ""
        print(f"| {d['config']} | {'1st' if d['first_order'] else '2nd'} | "
              f"{d['tasks']}{'+xla' if d.get('xla') else ''} | {fmt(d['sec_per_iter_median'])} | "
              f"{_flops(d['product_flops_per_step'])} | {100 * share:.1f}% | "
              f"{d['product_gflops_per_s']:.1f} GFLOP/s | {d['peak_gflops']:.0f} GFLOP/s{one} | "
              f"{d['percent_of_peak']:.0f}% |")


def main(paths):
    if paths and paths[0] == "--peak":
        return peak_table(paths[1:])
    # bench/main_speed.py's summaries name the config instead
    rows = _lines(paths, lambda d: d.get("summary") is True)
    cpus = sorted({f"{d['cpu']['model']}{' [' + d['cpu']['id'] + ']' if d['cpu'].get('id') else ''} "
                   f"({', '.join(d['cpu']['extensions'])}), {d['cpu']['cpus']} CPUs"
                   for d in rows if "cpu" in d})
    for c in cpus:
        print(f"CPU: {c}\n")
    print("| config | order | maml-tf (path) | anchors (median s/iter) | ours / fastest | "
          "first call | peak RSS MB ours / fastest anchor |")
    print("|---|---|---|---|---|---|---|")
    for d in rows:
        med = d["sec_per_iter_median"]
        anchors = ", ".join(f"{k} {fmt(v)}" for k, v in med.items() if k != "maml-tf")
        fastest = d["fastest_anchor"]
        rss = d["peak_rss_mb"]
        print(f"| {d['config']} | {'1st' if d['first_order'] else '2nd'} | {fmt(med['maml-tf'])} "
              f"({d.get('path', '?')}) | "
              f"{anchors} | **{d['ratio_median']:.2f}** ({fastest}) | {d['compile_s']:.1f} s | "
              f"{rss['maml-tf']:.0f} / {rss[fastest]:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
