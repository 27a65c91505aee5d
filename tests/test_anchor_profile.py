"""bench/anchor_profile.py: with the anchor's interpreter it profiles the anchor's own step and
sums its convolutions apart; without torch it says so in one line."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "anchor_profile.py"
ANCHORS = pathlib.Path(os.environ.get("MAML_ANCHORS_DIR", REPO.parent / "shared" / "anchors"))
TORCH_PYTHON = os.environ.get("MAML_TORCH_PYTHON", "/work/venvs/torch/bin/python")


def _has_torch(python):
    return subprocess.run([sys.executable if python is None else python, "-c", "import torch"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(_has_torch(None), reason="this interpreter has torch")
def test_without_torch_one_line_names_the_fix():
    r = subprocess.run([sys.executable, str(SCRIPT), "--config", "omniglot5w1s"], capture_output=True, text=True)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith("error: torch is not installed in this interpreter")


@pytest.mark.skipif(not (os.path.exists(TORCH_PYTHON) and (ANCHORS / "torch_maml_bench.py").is_file()),
                    reason="needs the torch.func anchor and its interpreter (bench/README.md)")
def test_profiles_the_anchors_step_and_separates_its_convolutions():
    def run(config):
        r = subprocess.run([TORCH_PYTHON, str(SCRIPT), "--config", config, "--iters", "1", "--json",
                            "--anchors_dir", str(ANCHORS)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])
    mlp = run("sinusoid")
    assert mlp["conv_ms"] == 0 and mlp["op_ms"] > 0  # an MLP has no convolution
    conv = run("omniglot5w1s")
    assert 0 < conv["conv_ms"] < conv["op_ms"]
    assert any("convolution" in k for k in conv["ops"])
