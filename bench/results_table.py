#!/usr/bin/env python
"""Markdown table from the summary lines of ``meta_step.py --compare`` runs.

    python bench/meta_step.py --config sinusoid --compare > runs.jsonl   # ... for each cell
    python bench/results_table.py runs.jsonl [more.jsonl ...]

Reads every JSON line with ``"summary": true`` (other lines, such as
``bench/main_speed.py``'s, are skipped) and prints one row per
(config, order): our median sec/iter, each anchor's, the ratio to the fastest
anchor, our first call (compile) time, and peak RSS (ours / the fastest anchor's).
"""
import json
import sys

ORDER = ["sinusoid", "omniglot5w1s", "omniglot20w1s", "mini5w1s", "mini5w5s"]


def fmt(sec):
    return f"{sec * 1e3:.3g} ms" if sec < 0.1 else f"{sec:.3g} s"


def main(paths):
    rows = []
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    d = json.loads(line)
                    if d.get("summary") is True:  # bench/main_speed.py's summaries name the config instead
                        rows.append(d)
    rows.sort(key=lambda d: (ORDER.index(d["config"]) if d["config"] in ORDER else 99,
                             d["first_order"]))
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
