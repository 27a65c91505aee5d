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

    def measure_all(spec, settings, shapes, options, steps=None):
        calls.extend(options)
        return {opt: fake[opt] for opt in options}
    monkeypatch.setattr(autotune, "measure_all", measure_all)
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


def test_choose_gives_seconds_only_where_it_measured_them_now(cache, monkeypatch):
    """A threads trial's child re-times its path only when the choice did not just time it:
    seconds from this call's measurement, None for a cached choice or a single candidate."""
    cfg = Config(datasource="sinusoid", norm="None", meta_batch_size=4, update_batch_size=5)
    spec, shapes = network_spec(cfg), input_shapes(cfg)
    fake = {("batched", True): 3.0, ("batched", False): 2.0, ("loop", True): 1.0, ("loop", False): 4.0}
    monkeypatch.setattr(autotune, "measure_all", lambda spec, settings, shapes, options, steps=None:
                        {opt: fake[opt] for opt in options})
    assert autotune._choose(spec, SETTINGS, shapes, None, None, None, None) == (("loop", True), 1.0)
    assert autotune._choose(spec, SETTINGS, shapes, None, None, None, None) == (("loop", True), None)
    assert autotune._choose(spec, SETTINGS, shapes, "batched", False, None, None) == (("batched", False), None)


def test_trial_child_times_its_path_only_where_the_choice_did_not(monkeypatch, capsys):
    """_trial_main reports the seconds the choice measured just now; a path that came from the
    cache (seconds None) is timed now, once."""
    timed = []
    monkeypatch.setattr(autotune, "measure", lambda spec, settings, shapes, mode, xla, steps=None:
                        timed.append((mode, xla)) or 0.5)
    payload = json.dumps(dict(datasource="sinusoid", norm="None", meta_batch_size=4, update_batch_size=5))
    monkeypatch.setattr(autotune, "_choose", lambda *a: (("loop", True), 0.25))
    autotune._trial_main(payload)
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"choice": ["loop", True], "seconds": 0.25}
    assert timed == []
    monkeypatch.setattr(autotune, "_choose", lambda *a: (("batched", False), None))
    autotune._trial_main(payload)
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"choice": ["batched", False], "seconds": 0.5}
    assert timed == [("batched", False)]


def test_another_cpu_generation_with_the_same_name_is_measured_afresh(cache, monkeypatch):
    """Virtual machines show one model name ("Intel(R) Xeon(R) Processor") for different
    generations: the family/model/stepping numbers are part of the cache key, so a choice
    timed on one is not reused on another."""
    cfg = Config(datasource="sinusoid", norm="None", meta_batch_size=4, update_batch_size=5)
    spec, shapes = network_spec(cfg), input_shapes(cfg)
    calls = []

    def measure_all(spec, settings, shapes, options, steps=None):
        calls.extend(options)
        fast = ("loop", False) if len(calls) <= len(options) else ("batched", True)
        return {opt: 1.0 if opt == fast else 2.0 for opt in options}
    monkeypatch.setattr(autotune, "measure_all", measure_all)
    real = autotune.cpu_description()
    for ident in ("family 6 model 143 stepping 8", "family 6 model 167 stepping 1"):
        monkeypatch.setattr(autotune, "cpu_description",
                            lambda ident=ident: dict(real, model="Intel(R) Xeon(R) Processor", id=ident))
        first = autotune.choose(spec, SETTINGS, shapes)
        assert autotune.choose(spec, SETTINGS, shapes) == first  # cached for this CPU
    assert len(calls) == 8  # measured once on each
    data = json.loads(cache.read_text())
    machines = sorted(k for k in data if k != "version")
    assert len(machines) == 2 and "model 143" in machines[0] and "model 167" in machines[1]
    assert [tuple(e["choice"]) for m in machines for e in data[m].values()] == [
        ("loop", False), ("batched", True)]


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


def test_candidates_are_timed_interleaved_so_a_stall_hits_all_alike(monkeypatch):
    """A pause of the process (or a burst of load elsewhere) during the measurement:
    timed one after the other, the candidate it hits looks slow; interleaved, every
    candidate sees it once per round at most and the medians keep the true order."""
    cfg = Config(datasource="sinusoid", norm="None", meta_batch_size=2, update_batch_size=3)
    spec, shapes = network_spec(cfg), input_shapes(cfg)
    cost = {"batched": 0.002, "loop": 0.004}  # the true step times: batched is faster
    clock = {"t": 0.0, "calls": 0}

    class Fake:
        def __init__(self, spec, task_mode, jit_compile, **settings):
            self.mode = task_mode

        def metatrain_step(self, *batch):
            clock["calls"] += 1
            # A stall over the 5th-10th calls of a measurement (a pause of the process).
            clock["t"] += cost[self.mode] + (0.1 if 5 <= clock["calls"] <= 10 else 0.0)
    import maml_tf.methods.maml as maml_module
    monkeypatch.setattr(maml_module, "MAML", Fake)
    monkeypatch.setattr(autotune.time, "perf_counter", lambda: clock["t"])
    settings = dict(SETTINGS, update_batch_size=3)
    timings = autotune.measure_all(spec, settings, shapes, [("batched", False), ("loop", False)], steps=8)
    assert timings[("batched", False)] == pytest.approx(0.002)
    assert timings[("loop", False)] == pytest.approx(0.004)
    # The same stall on a candidate timed alone, 8 steps in a block: it looks 25x slower.
    clock["calls"] = 0
    alone = autotune.measure_all(spec, settings, shapes, [("batched", False)], steps=8)
    assert alone[("batched", False)] > 0.05


def test_disabled_takes_the_static_default(cache, monkeypatch):
    monkeypatch.setenv("MAML_TF_AUTOTUNE", "0")
    cfg = Config(datasource="sinusoid", norm="None")
    monkeypatch.setattr(autotune, "measure_all", lambda *a, **k: pytest.fail("measured"))
    assert autotune.choose(network_spec(cfg), SETTINGS, input_shapes(cfg)) == ("batched", True)
    assert not cache.exists()


# ---------------------------------------------------------------- oneDNN on or off
ZEN2 = ["avx", "avx2", "fma"]                                    # AMD EPYC 7002: AVX2 only
SKYLAKE_SP = ["avx", "avx2", "fma", "avx512f", "avx512bw"]        # AVX-512 without VNNI
ZEN4 = ["avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]
SAPPHIRE_RAPIDS = ZEN4 + ["amx_tile", "amx_bf16", "amx_int8"]
ALDER_LAKE = ["avx", "avx2", "fma", "avx_vnni"]


def test_tf_onednn_default_follows_tensorflows_policy():
    # tensorflow/core/util/port.cc, DefaultOneDnnPolicy on Linux x86.
    for ext, on in ((ZEN2, False), (SKYLAKE_SP, False), (ZEN4, True), (SAPPHIRE_RAPIDS, True),
                    (ALDER_LAKE, True)):
        assert autotune.tf_onednn_default(ext, "Linux", "x86_64") is on, ext
    assert autotune.tf_onednn_default(ZEN2, "Darwin", "x86_64") is None
    assert autotune.tf_onednn_default(ZEN2, "Linux", "aarch64") is None


def test_tf_onednn_default_agrees_with_tensorflow_on_this_machine():
    """The policy read from this CPU's flags is what this TensorFlow does by itself."""
    import os
    import subprocess
    import sys
    predicted = autotune.tf_onednn_default(autotune.cpu_description()["extensions"])
    if predicted is None:
        pytest.skip("not Linux x86-64")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    code = ("import tensorflow\nfrom tensorflow.python.util import _pywrap_util_port as p\n"
            "print(bool(p.IsMklEnabled()))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(predicted)


@pytest.fixture
def onednn_unset(monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "restored-by-monkeypatch")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    return monkeypatch


OMNI = dict(datasource="omniglot", num_classes=5, meta_batch_size=2, update_batch_size=1, num_updates=1,
            update_lr=0.4, num_filters=8)


def test_choose_onednn_measures_once_and_obeys_the_user(cache, onednn_unset):
    import os
    calls, lines = [], []

    def trial(cfg):
        calls.append(cfg)
        return {"0": 2.0, "1": 1.0}
    cfg = Config(**OMNI)
    checked = []
    assert autotune.choose_onednn(cfg, lines.append, extensions=ZEN2, trial=trial,
                                  before_trial=lambda: checked.append(1)) == "1"
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1" and len(calls) == 1 and checked == [1]
    # A check before the trial that fails stops it (main.py: the data folder).
    onednn_unset.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)

    def missing():
        raise ValueError("no data")
    with pytest.raises(ValueError, match="no data"):
        autotune.choose_onednn(Config(**dict(OMNI, num_filters=4)), extensions=ZEN2, trial=trial,
                               before_trial=missing)
    assert len(calls) == 1 and "TF_ENABLE_ONEDNN_OPTS" not in os.environ
    assert "oneDNN on" in lines[-1] and "1 s" in lines[-1] and "2 s" in lines[-1]
    # Cached: neither the same run again nor its evaluation (--train=False) measures.
    for again in (cfg, Config(**OMNI, train=False, logdir="elsewhere", metatrain_iterations=5)):
        onednn_unset.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
        assert autotune.choose_onednn(again, extensions=ZEN2, trial=trial) == "1" and len(calls) == 1
    # An evaluation of a configuration never trained here does not measure.
    onednn_unset.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert autotune.choose_onednn(Config(**dict(OMNI, meta_batch_size=4), train=False), extensions=ZEN2,
                                  trial=trial) is None
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ and len(calls) == 1
    # Another step configuration is measured afresh; the faster setting wins either way.
    assert autotune.choose_onednn(Config(**dict(OMNI, stop_grad=True)), extensions=ZEN2,
                                  trial=lambda c: {"0": 1.0, "1": 3.0}) == "0"
    # Not decided: the user's own setting, a CPU where TensorFlow turns oneDNN on, the fc
    # nets, autotuning off, a trial that failed.
    onednn_unset.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert autotune.choose_onednn(Config(**dict(OMNI, num_filters=16)), extensions=ZEN2, trial=trial) is None
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    onednn_unset.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    for c, ext in ((Config(**dict(OMNI, num_filters=16)), SAPPHIRE_RAPIDS),
                   (Config(datasource="sinusoid", norm="None"), ZEN2)):
        assert autotune.choose_onednn(c, extensions=ext, trial=trial) is None
    assert autotune.choose_onednn(Config(**dict(OMNI, num_filters=16)), extensions=ZEN2, trial=lambda c: {}) is None
    onednn_unset.setenv("MAML_TF_AUTOTUNE", "0")
    assert autotune.choose_onednn(Config(**dict(OMNI, num_filters=16)), extensions=ZEN2, trial=trial) is None
    assert len(calls) == 1 and "TF_ENABLE_ONEDNN_OPTS" not in os.environ


def test_onednn_trial_times_the_step_both_ways(cache):
    """The real trial: two child processes, each timing its best path; each child's
    path choice is cached under its own oneDNN setting, for the run that follows."""
    seconds = autotune.onednn_trial(Config(**OMNI))
    assert set(seconds) == {"0", "1"} and all(0 < s < 60 for s in seconds.values())
    machines = [k for k in json.loads(cache.read_text()) if k != "version"]
    assert sorted(m.rsplit("onednn=", 1)[1] for m in machines) == ["0", "1"]


def test_runs_measuring_side_by_side_keep_both_choices(cache, monkeypatch):
    """Two runs started together each measure for minutes: the one that finishes second
    must not write back the cache it read before measuring, dropping the first's entry."""
    cfg = Config(datasource="sinusoid", norm="None", meta_batch_size=4, update_batch_size=5)
    spec = network_spec(cfg)
    small, large = input_shapes(cfg), input_shapes(cfg, meta_batch_size=8)
    calls = []

    def measure_all(spec, settings, shapes, options, steps=None):
        calls.append(shapes)
        if len(calls) == 1:  # while the first run measures, the second stores its choice
            autotune.choose(spec, SETTINGS, large)
        return {opt: 1.0 + i for i, opt in enumerate(options)}
    monkeypatch.setattr(autotune, "measure_all", measure_all)
    autotune.choose(spec, SETTINGS, small)
    assert len(calls) == 2
    (machine, entries), = [(k, v) for k, v in json.loads(cache.read_text()).items() if k != "version"]
    assert len(entries) == 2
    # Both are cached: neither configuration is measured again.
    autotune.choose(spec, SETTINGS, small)
    autotune.choose(spec, SETTINGS, large)
    assert len(calls) == 2


@pytest.fixture
def split_unset(monkeypatch):
    monkeypatch.setenv(autotune.THREAD_SPLIT, "restored-by-monkeypatch")
    monkeypatch.delenv(autotune.THREAD_SPLIT)
    return monkeypatch


def test_thread_settings_split_runs_ops_side_by_side():
    from maml_tf.methods.maml import THREAD_SPLIT, thread_settings
    assert THREAD_SPLIT == autotune.THREAD_SPLIT  # the variable both layers name
    conv, fc = network_spec(Config(**OMNI)), network_spec(Config(datasource="sinusoid", norm="None"))
    assert thread_settings(conv, 2) == (2, 2) and thread_settings(conv, 2, split=True) == (1, 2)
    assert thread_settings(fc, 4) == thread_settings(fc, 4, split=True) == (1, 4)


def test_choose_threads_measures_once_and_obeys_the_user(cache, split_unset):
    import os
    calls, lines = [], []

    def trial(cfg):
        calls.append(cfg)
        return {"0": 0.66, "1": 0.58}
    cfg = Config(**OMNI)
    assert autotune.choose_threads(cfg, lines.append, trial=trial, cpus=2) == "1"
    assert os.environ[autotune.THREAD_SPLIT] == "1" and len(calls) == 1
    assert "ops side by side" in lines[-1] and "0.58 s" in lines[-1] and "0.66 s" in lines[-1]
    # Cached: the same run again and its evaluation read it; an untrained configuration's
    # evaluation decides nothing.
    for again in (cfg, Config(**OMNI, train=False, logdir="elsewhere")):
        split_unset.delenv(autotune.THREAD_SPLIT, raising=False)
        assert autotune.choose_threads(again, trial=trial, cpus=2) == "1" and len(calls) == 1
    split_unset.delenv(autotune.THREAD_SPLIT, raising=False)
    assert autotune.choose_threads(Config(**dict(OMNI, meta_batch_size=4), train=False), trial=trial, cpus=2) is None
    # The faster wins either way; another machine (here: CPU count) measures afresh.
    assert autotune.choose_threads(Config(**dict(OMNI, stop_grad=True)), trial=lambda c: {"0": 1.0, "1": 2.0},
                                   cpus=2) == "0"
    split_unset.delenv(autotune.THREAD_SPLIT)
    assert autotune.choose_threads(cfg, trial=lambda c: {"0": 1.0, "1": 2.0}, cpus=4) == "0"
    split_unset.delenv(autotune.THREAD_SPLIT)
    # Not decided: the user's own setting, one CPU, the fc nets, autotuning off, a failed trial.
    split_unset.setenv(autotune.THREAD_SPLIT, "0")
    assert autotune.choose_threads(Config(**dict(OMNI, num_filters=16)), trial=trial, cpus=2) is None
    assert os.environ[autotune.THREAD_SPLIT] == "0"
    split_unset.delenv(autotune.THREAD_SPLIT)
    assert autotune.choose_threads(Config(**dict(OMNI, num_filters=16)), trial=trial, cpus=1) is None
    assert autotune.choose_threads(Config(datasource="sinusoid", norm="None"), trial=trial, cpus=2) is None
    assert autotune.choose_threads(Config(**dict(OMNI, num_filters=16)), trial=lambda c: {}, cpus=2) is None
    split_unset.setenv("MAML_TF_AUTOTUNE", "0")
    assert autotune.choose_threads(Config(**dict(OMNI, num_filters=16)), trial=trial, cpus=2) is None
    assert len(calls) == 1 and autotune.THREAD_SPLIT not in os.environ


def test_threads_trial_times_the_step_both_ways(cache, split_unset):
    """The real trial: two children, each timing its best path now; the split child's
    path choice is cached under a key of its own (its steps run at another speed)."""
    seconds = autotune.threads_trial(Config(**OMNI))
    assert set(seconds) == {"0", "1"} and all(0 < s < 60 for s in seconds.values())
    machines = [k for k in json.loads(cache.read_text()) if k != "version"]
    assert sorted(m.endswith("|threads=split") for m in machines) == [False, True]
