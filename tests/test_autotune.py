"""maml_tf.run.autotune: the step's path is measured once per machine and configuration."""
import json

import pytest

from maml_tf.run import autotune
from maml_tf.run.config import Config
from maml_tf.run.model import build_model, input_shapes, network_spec

SETTINGS = dict(loss="mse", update_batch_size=5, update_lr=0.01, num_updates=1, first_order=False,
                clip_value=None)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAML_TF_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MAML_TF_AUTOTUNE", "1")
    return tmp_path / autotune.CACHE_NAME


def test_measures_once_chooses_the_fastest_and_caches(cache, monkeypatch):
    cfg = Config(datasource="sinusoid", norm="None", meta_batch_size=4, update_batch_size=5)
    spec, shapes = network_spec(cfg), input_shapes(cfg)
    fake = {("batched", True): 3.0, ("batched", False): 2.0, ("loop", True): 1.0, ("loop", False): 4.0}
    calls = []
    monkeypatch.setattr(autotune, "measure",
                        lambda spec, settings, shapes, mode, jit, steps=None: calls.append((mode, jit)) or fake[mode, jit])
    lines = []
    assert autotune.choose(spec, SETTINGS, shapes, out=lines.append) == ("loop", True)
    assert sorted(calls) == sorted(fake) and "using loop with XLA" in lines[0]
    data = json.loads(cache.read_text())
    (machine, entries), = [(k, v) for k, v in data.items() if k != "version"]
    assert autotune.cpu_description()["model"] in machine
    # Cached: the same configuration is not measured again.
    assert autotune.choose(spec, SETTINGS, shapes) == ("loop", True) and len(calls) == 4
    # What the user fixed is obeyed: only the remaining choice is measured.
    assert autotune.choose(spec, SETTINGS, shapes, task_mode="batched") == ("batched", False)
    assert autotune.choose(spec, SETTINGS, shapes, task_mode="batched", jit_compile=True) == ("batched", True)
    # Another configuration (meta-batch size) is measured afresh.
    autotune.choose(spec, SETTINGS, input_shapes(cfg, meta_batch_size=8))
    assert len(calls) == 10


def test_real_measurement_and_build_model(cache):
    """A real (tiny) measurement: every candidate runs, the choice is one of them, and
    build_model(tune=True) builds the model that way."""
    cfg = Config(datasource="sinusoid", norm="None", meta_batch_size=2, update_batch_size=3,
                 train=True)
    spec = network_spec(cfg)
    t = autotune.measure(spec, dict(SETTINGS, update_batch_size=3), input_shapes(cfg), "loop", False, steps=3)
    assert 0 < t < 5
    model = build_model(cfg, tune=True)
    choice = json.loads(cache.read_text())
    (entries,) = [v for k, v in choice.items() if k != "version"]
    (entry,) = entries.values()
    assert (model.task_mode, model.jit_compile) == tuple(entry["choice"])
    assert set(entry["seconds"]) == {"batched/xla", "batched/graph", "loop/xla", "loop/graph"}


def test_disabled_takes_the_static_default(cache, monkeypatch):
    monkeypatch.setenv("MAML_TF_AUTOTUNE", "0")
    cfg = Config(datasource="sinusoid", norm="None")
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured"))
    assert autotune.choose(network_spec(cfg), SETTINGS, input_shapes(cfg)) == ("batched", True)
    assert not cache.exists()
