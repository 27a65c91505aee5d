"""bench/device_check.sh, the script prepared for a machine with an accelerator, in its CPU form
(--smoke): it must run start to end here so that it works the first time a GPU is there."""
import json
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_device_check_smoke_runs_every_step(tmp_path, omniglot_data_dir):
    out = tmp_path / "check"
    r = subprocess.run(["bash", str(REPO / "bench" / "device_check.sh"), "--smoke", "--out", str(out),
                        "--data_dir", str(omniglot_data_dir)],
                       cwd=str(REPO), capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Device check: ") and "failed" not in summary, summary
    assert "tensorflow" in (out / "machine.txt").read_text()
    lines = [json.loads(l) for l in (out / "bench.jsonl").read_text().splitlines()]
    assert [(l["config"], l["first_order"]) for l in lines] == [
        ("sinusoid", False), ("sinusoid", True), ("omniglot5w1s", False), ("omniglot5w1s", True)]
    assert all(l["product_flops_per_step"] > 0 and l["sec_per_iter_median"] > 0 for l in lines)
    # Each usage line ran its iterations and reported a rate.
    rows = [l for l in summary.splitlines() if l.startswith("| omniglot")]
    assert [r.split("|")[1].strip() for r in rows if "it" in r.split("|")[4]] == \
        ["omniglot5w1s", "omniglot20w1s"], summary


def test_device_check_rejects_an_unknown_argument(tmp_path):
    r = subprocess.run(["bash", str(REPO / "bench" / "device_check.sh"), "--gpus=2"], cwd=str(REPO),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown argument --gpus=2")
