"""maml_tf.runtime.import_tensorflow: TensorFlow without its eager Keras import."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT


def _run(code):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=300, cwd=REPO_ROOT,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_tensorflow_without_keras_then_keras_on_demand():
    res = _run("""
        import sys
        from maml_tf.runtime import import_tensorflow
        tf = import_tensorflow()
        print(sum(m == "keras" or m.startswith("keras.") for m in sys.modules))
        print("keras.src.optimizers" in sys.modules)
        print(float(tf.reduce_sum(tf.constant([1.0, 2.0]))))
        import keras.src.optimizers                       # still importable afterwards
        print(tf.keras.optimizers.Adam.__module__)
    """)
    assert res == ["0", "False", "3.0", "keras.src.optimizers.adam"]


def test_plain_import_loads_keras_so_the_test_above_can_fail():
    res = _run("""
        import sys
        import tensorflow
        print(sum(m == "keras" or m.startswith("keras.") for m in sys.modules) > 0)
    """)
    assert res == ["True"]


def test_noop_when_tensorflow_already_imported():
    res = _run("""
        import tensorflow as tf0
        from maml_tf.runtime import import_tensorflow
        print(import_tensorflow() is tf0)
    """)
    assert res == ["True"]


def test_command_line_tools_start_without_tensorflows_startup_lines():
    """The tools' __main__ (maml_tf.runtime.quiet_start) hold back what a plain
    ``import tensorflow`` prints on this machine (oneDNN notice, CUDA stubs, cuInit)."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    plain = subprocess.run([sys.executable, "-c", "import tensorflow as tf; tf.config.list_physical_devices()"],
                           env=env, capture_output=True, text=True, timeout=300)
    if not plain.stderr.strip():
        pytest.skip("TensorFlow prints nothing at start-up here: nothing to hold back")
    for tool in (["-m", "maml_tf.run.pretrained", "list"], ["-m", "maml_tf.paper.learning_curve", "--help"]):
        proc = subprocess.run([sys.executable] + tool, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stderr.strip() == "", (tool, proc.stderr[-2000:])
