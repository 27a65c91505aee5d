"""tf.distribute: a mirrored / multi-worker step equals the single-device step."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO_ROOT

SINE = ["--datasource=sinusoid", "--norm=None", "--update_batch_size=5", "--update_lr=0.01",
        "--meta_batch_size=4", "--save_interval=5"]
EXP = "cls_5.mbs_4.ubs_5.numstep1.updatelr0.01nonorm"

MIRRORED_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    from maml_tf.run.distribute import Stepper, make_strategy
    from maml_tf.methods.maml import MAML
    from maml_tf.core.networks import NetworkSpec, build_network
    from maml_tf.run.config import UsageError

    def check(single, mirrored, name, steps):
        for key in single.weights:
            a, b = single.weights[key].numpy(), mirrored.weights[key].numpy()
            # Conv biases in front of batch norm have an exactly zero gradient; float32 noise
            # decides the sign of Adam's step there, so they may differ by up to 2 lr per step.
            atol = 2e-3 * steps + 1e-6 if (single.spec.norm == "batch_norm" and single.spec.kind == "conv"
                                   and key in ("b1", "b2", "b3", "b4")) else 1e-6
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol, err_msg=f"{name} {key}")
        for key in single.norm_params:
            np.testing.assert_allclose(single.norm_params[key].numpy(), mirrored.norm_params[key].numpy(),
                                       rtol=1e-4, atol=1e-6, err_msg=f"{name} {key}")

    strategy = make_strategy("mirrored", cpu_devices=2)
    assert strategy.num_replicas_in_sync == 2
    rng = np.random.default_rng(0)
    cases = {
        "sine": (build_network("sinusoid", 1, 1, norm="None"), "mse", 0.01, 2),
        "conv_bn": (NetworkSpec("conv", 64, 3, (4,), norm="batch_norm", channels=1, img_size=8), "xent", 0.4, 2),
        "pool_bn": (NetworkSpec("conv", 16 * 16 * 3, 3, (4,), norm="batch_norm", channels=3, img_size=16,
                                max_pool=True, flatten=True, head_init="xavier"), "xent", 0.01, 3),
    }
    for name, (spec, loss, alpha, n) in cases.items():
        for first_order in (False, True):
            t = 4
            if loss == "mse":
                xa, xb = rng.uniform(-5, 5, (t, 5, 1)), rng.uniform(-5, 5, (t, 5, 1))
                batch = (xa, np.sin(xa), xb, np.sin(xb))
            else:
                y = np.tile(np.eye(3)[np.repeat(np.arange(3), 2)][None], (t, 1, 1))
                batch = (rng.random((t, 6, spec.dim_input)), y, rng.random((t, 6, spec.dim_input)), y)
            batch = [b.astype(np.float32) for b in batch]
            kw = dict(update_batch_size=2, update_lr=alpha, num_updates=n, first_order=first_order,
                      seed=1, clip_value=10.0 if name == "pool_bn" else None)
            single = MAML(spec, loss, **kw)
            with strategy.scope():
                mirrored = MAML(spec, loss, **kw)
            stepper = Stepper(mirrored, strategy, t)
            m1 = single.metatrain_step(*batch)
            m2 = stepper.metatrain_step(*batch)
            assert abs(m1["postloss"] - m2["postloss"]) <= 1e-5 * max(1, abs(m1["postloss"])), (name, m1, m2)
            check(single, mirrored, name, 1)
            # the update really moved the weights
            assert any(not np.allclose(a.numpy(), w) for a, w in
                       zip(single.meta_vars, [v for v in spec.init(1)[0].values()]))
            # pre-training too
            p1, p2 = single.pretrain_step(*batch), stepper.pretrain_step(*batch)
            assert abs(p1["preloss"] - p2["preloss"]) <= 1e-5 * max(1, abs(p1["preloss"]))
            check(single, mirrored, name, 2)
    try:
        Stepper(mirrored, strategy, 3)
    except UsageError as e:
        assert "--meta_batch_size=3" in str(e)
    else:
        raise AssertionError("odd meta-batch accepted")
    print("MIRRORED_OK")
""")


def test_mirrored_step_equals_single_device_step():
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert "MIRRORED_OK" in proc.stdout, proc.stdout + proc.stderr


def _weights(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith("model/") and "ATTRIBUTES" in k}


def _main(args, env=None, timeout=300):
    return subprocess.run([sys.executable, "main.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _compare(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=1e-3, atol=1e-5, err_msg=k)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One device, 11 iterations: checkpoints model5 and model10 to compare against."""
    logdir = tmp_path_factory.mktemp("single")
    p = _main(SINE + [f"--logdir={logdir}", "--metatrain_iterations=11", "--max_to_keep=10"])
    assert p.returncode == 0, p.stderr
    return logdir


def test_mirrored_cli_matches_single_device_and_resumes(tmp_path, single):
    mirrored = tmp_path / "mirrored"
    args = SINE + [f"--logdir={mirrored}", "--distribution=mirrored", "--cpu_devices=2"]
    p = _main(args + ["--metatrain_iterations=6"])
    assert p.returncode == 0, p.stderr
    p = _main(args + ["--metatrain_iterations=11"])
    assert p.returncode == 0 and "resuming at iteration 6" in p.stdout, p.stdout + p.stderr
    _compare(str(single / EXP / "model10"), str(mirrored / EXP / "model10"))
    bad = _main(SINE[:-2] + ["--meta_batch_size=3", "--save_interval=5", f"--logdir={tmp_path / 'bad'}",
                             "--distribution=mirrored", "--cpu_devices=2", "--metatrain_iterations=2"])
    assert bad.returncode == 2 and "--meta_batch_size=3" in bad.stderr and "Traceback" not in bad.stderr


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_on_loopback_match_single_device(tmp_path, single):
    multi = tmp_path / "multi"
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [sys.executable, "main.py", *SINE, f"--logdir={multi}", "--distribution=multi_worker",
             "--metatrain_iterations=6"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, o + e
    _compare(str(single / EXP / "model5"), str(multi / EXP / "model5"))
    # Only the chief wrote into the experiment folder.
    assert not [d for d in os.listdir(multi / EXP) if d.startswith(".worker")]
