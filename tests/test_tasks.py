"""Sinusoid tasks as the original drew them; the prefetching producer."""
import numpy as np
import pytest

from maml_tf.data.tasks import Prefetcher, SinusoidTasks


def test_sinusoid_draws_equal_the_originals_sequence():
    """np.random.seed(1) then the original's calls (amp, phase, then x per task)."""
    tasks = SinusoidTasks(meta_batch_size=1, k_support=5, seed=1)
    np.random.seed(1)
    for _ in range(3):
        amp = np.random.uniform(0.1, 5.0, [1])
        phase = np.random.uniform(0, np.pi, [1])
        x = np.random.uniform(-5.0, 5.0, [10, 1])
        y = amp[0] * np.sin(x - phase[0])
        xa, ya, xb, yb = tasks.sample()
        np.testing.assert_allclose(xa[0], x[:5].astype(np.float32))
        np.testing.assert_allclose(xb[0], x[5:].astype(np.float32))
        np.testing.assert_allclose(ya[0], y[:5].astype(np.float32))
        np.testing.assert_allclose(yb[0], y[5:].astype(np.float32))


def test_sinusoid_ranges_oracle_and_state():
    tasks = SinusoidTasks(meta_batch_size=200, k_support=10, seed=0, oracle=True)
    xa, ya, xb, yb = tasks.sample()
    assert xa.shape == (200, 10, 3) and ya.shape == (200, 10, 1) and xb.shape == (200, 10, 3)
    amp, phase = xa[:, 0, 1], xa[:, 0, 2]
    assert amp.min() >= 0.1 and amp.max() <= 5.0 and phase.min() >= 0 and phase.max() <= np.pi
    assert np.abs(xa[..., 0]).max() <= 5.0
    np.testing.assert_allclose(ya[..., 0], amp[:, None] * np.sin(xa[..., 0] - phase[:, None]), rtol=1e-5, atol=1e-5)
    state = tasks.get_state()
    nxt = tasks.sample()
    tasks.set_state(state)
    for a, b in zip(nxt, tasks.sample()):
        np.testing.assert_array_equal(a, b)


def test_prefetcher_keeps_order_and_state():
    src = SinusoidTasks(meta_batch_size=2, k_support=3, seed=4)
    ref = SinusoidTasks(meta_batch_size=2, k_support=3, seed=4)
    p = Prefetcher(src, depth=2)
    try:
        for _ in range(5):
            batch, state = p.next()
            expected = ref.sample()
            for a, b in zip(batch, expected):
                np.testing.assert_array_equal(a, b)
            assert state == ref.get_state()  # state right after this batch
    finally:
        p.close()


def test_prefetcher_raises_the_sources_error():
    class Broken:
        def sample(self):
            raise ValueError("disk gone")

        def get_state(self):
            return ""

    p = Prefetcher(Broken())
    with pytest.raises(ValueError, match="disk gone"):
        p.next()
    p.close()
