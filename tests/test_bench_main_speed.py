"""bench/main_speed.py's interleaving: stopped stretches are left out of the iteration
times it compares (hand-made rows, and a real child process stopped and continued)."""
import json
import pathlib
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import main_speed  # noqa: E402


def test_running_seconds_leaves_out_stopped_stretches():
    stops = [(1.0, 2.0), (5.0, 5.5)]
    assert main_speed.running_seconds(0.0, 0.5, stops) == pytest.approx(0.5)      # none
    assert main_speed.running_seconds(0.5, 3.0, stops) == pytest.approx(1.5)      # one inside
    assert main_speed.running_seconds(1.5, 2.5, stops) == pytest.approx(0.5)      # starts stopped
    assert main_speed.running_seconds(0.0, 6.0, stops) == pytest.approx(4.5)      # both
    assert main_speed.running_seconds(5.2, 5.4, stops) == pytest.approx(0.0)      # all stopped


def test_main_steady_rows():
    # (iteration, end time, checkpoint written): iterations 0-5, warm-up 2, a save at 4,
    # a stop from 11.5 to 13.1: 0.4 s of iteration 3, all of 4 (saved), 0.1 s of 5.
    rows = [(0, 10.0, 0), (1, 10.5, 0), (2, 10.7, 0), (3, 11.9, 0), (4, 13.0, 1), (5, 13.25, 0)]
    its, got = main_speed.main_steady(rows, warmup=2, stops=[(11.5, 13.1)])
    np.testing.assert_allclose(got, [0.2, 0.8, 0.15])
    assert list(its) == [2, 3, 5]  # 4 wrote a checkpoint


def test_summary_iterations_split_out():
    # Iterations 98-203: ordinary ones take 0.1 s, the summary ones (100, 200) 0.7 s.
    iterations = np.arange(98, 204)
    seconds = np.where(iterations % 100 == 0, 0.7, 0.1)
    count, ordinary, extra = main_speed.split_summaries(iterations, seconds)
    assert count == 2 and ordinary == pytest.approx(0.1)
    assert extra == pytest.approx(2 * 0.6 / len(iterations))
    # Their sum is the mean of all iterations, as the ratio's numerator.
    assert ordinary + extra == pytest.approx(seconds.mean())
    rows = [(i, 10.0 + 0.1 * i, 0) for i in range(96, 104)]
    its, secs = main_speed.main_steady(rows, warmup=97, stops=[])
    assert list(its) == list(range(97, 104)) and np.allclose(secs, 0.1)


def test_summary_interval_is_the_training_loops():
    from maml_tf.run import train
    assert main_speed.SUMMARY_INTERVAL == train.SUMMARY_INTERVAL


def test_stopped_child_is_timed_without_its_stop(tmp_path):
    # A child that times 30 busy iterations of ~20 ms CPU each with its own perf_counter.
    child = tmp_path / "child.py"
    out = tmp_path / "spans.json"
    child.write_text(
        "import json, sys, time\n"
        "spans = []\n"
        "for _ in range(30):\n"
        "    t0, c0 = time.perf_counter(), time.process_time()\n"
        "    while time.process_time() - c0 < 0.02:\n"
        "        pass\n"
        "    spans.append((t0, time.perf_counter()))\n"
        f"json.dump(spans, open({str(out)!r}, 'w'))\n")
    proc = main_speed._Proc("child", [sys.executable, str(child)], tmp_path / "child.log")
    time.sleep(0.2)
    proc.stop()
    time.sleep(0.6)
    proc.cont()
    proc.finish(60)
    assert len(proc.stops) == 1
    stopped = proc.stops[0][1] - proc.stops[0][0]
    assert stopped >= 0.6
    spans = json.loads(out.read_text())
    raw = sum(b - a for a, b in spans)
    running = sum(main_speed.running_seconds(a, b, proc.stops) for a, b in spans)
    # the child was stopped inside its timed spans (its loop has no gaps to speak of)
    assert raw - running == pytest.approx(stopped, abs=0.01)
    assert max(b - a for a, b in spans) >= 0.6 > max(main_speed.running_seconds(a, b, proc.stops)
                                                     for a, b in spans)


def test_failed_run_stops_the_other_and_says_why(tmp_path):
    failing = main_speed._Proc("main.py", [sys.executable, "-c", "import sys; print('no data'); sys.exit(3)"],
                               tmp_path / "a.log")
    other = main_speed._Proc("step", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "b.log")
    other.stop()
    with pytest.raises(SystemExit, match=r"main.py failed \(exit 3\):\s+no data"):
        failing.finish(30, others=[other])
    assert other.p.wait(10) is not None  # killed, not left stopped


def test_results_table_reads_compare_lines_beside_main_speed_lines(tmp_path, capsys):
    """bench/results_table.py tabulates meta_step.py --compare summaries from a file that
    also holds bench/main_speed.py's lines (one sweep's output), naming the CPU's id."""
    import results_table
    cpu = {"model": "Intel(R) Xeon(R) Processor", "id": "family 6 model 167 stepping 1",
           "extensions": ["avx2"], "cpus": 2}
    compare = {"summary": True, "config": "omniglot5w1s", "first_order": True, "path": "batched",
               "sec_per_iter_median": {"maml-tf": 0.06, "torch:vmap": 0.1, "torch:loop": 0.18},
               "fastest_anchor": "torch:vmap", "ratio_median": 0.6, "compile_s": 0.9,
               "peak_rss_mb": {"maml-tf": 700.0, "torch:vmap": 500.0}, "cpu": cpu}
    speed = {"summary": "omniglot5w1s", "first_order": True, "main_sec_per_iter_mean": 0.07,
             "step_sec_per_iter_median": 0.06, "cpu": cpu}
    path = tmp_path / "sweep.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in (speed, compare, {"run": "main.py"})) + "\n")
    results_table.main([str(path)])
    out = capsys.readouterr().out
    assert "[family 6 model 167 stepping 1]" in out
    rows = [line for line in out.splitlines() if line.startswith("| omniglot5w1s")]
    assert len(rows) == 1 and "**0.60** (torch:vmap)" in rows[0] and "60 ms" in rows[0]


def test_results_table_peak_rows_from_every_maml_tf_line(tmp_path, capsys):
    """--peak: one row per maml-tf line, ordered by configuration then order, the elementwise
    share computed from the line's two counts, its rate, peak and percent as it gives them; (*)
    only where the peak was one core's against a step whose ops may run on more (lines without
    peak_chains)."""
    import results_table

    def line(config, first_order, threads, chains, sec, products, total, peak):
        d = {"stack": "maml-tf", "config": config, "first_order": first_order, "tasks": "loop",
             "xla": False, "sec_per_iter_median": sec, "product_flops_per_step": products,
             "flops_per_step": total, "product_gflops_per_s": products / sec / 1e9,
             "peak_gflops": peak, "percent_of_peak": 100 * products / sec / 1e9 / peak,
             "tf_intra_inter_threads": threads}
        if chains is not None:
            d["peak_chains"] = chains
        return d
    lines = [line("omniglot20w1s", False, [1, 2], 2, 0.5, 80e9, 82e9, 400.0),
             line("omniglot5w1s", True, [1, 2], None, 0.04, 5e9, 5.1e9, 250.0),
             line("omniglot5w1s", False, [2, 2], 1, 0.1, 10e9, 10.2e9, 500.0),
             {"summary": True, "config": "omniglot5w1s"}, {"stack": "torch.func", "config": "omniglot5w1s"}]
    path = tmp_path / "peak.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in lines) + "\n")
    results_table.main(["--peak", str(path)])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| omniglot")]
    assert [r.split(" | ")[:2] for r in rows] == [["| omniglot5w1s", "2nd"], ["| omniglot5w1s", "1st"],
                                                  ["| omniglot20w1s", "2nd"]]
    assert rows[0].endswith("| 10 GFLOP | 2.0% | 100.0 GFLOP/s | 500 GFLOP/s | 20% |")
    assert rows[1].endswith("| 250 GFLOP/s (*) | 50% |")  # one core's peak, an older line
    assert rows[2].endswith("| 80 GFLOP | 2.4% | 160.0 GFLOP/s | 400 GFLOP/s | 40% |")
