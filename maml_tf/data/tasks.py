"""Task data: the sinusoid regression tasks, and one entry point for every data source.

A task source has ``sample()`` -> (inputa, labela, inputb, labelb) as float32
arrays shaped [T, N*K, dim] (support: K examples per class) and [T, N*Q, dim]
(query), plus ``get_state()`` / ``set_state()`` so a checkpoint can resume the
exact stream of tasks.
"""
import json

import numpy as np


class SinusoidTasks:
    """y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5].

    Draws exactly as the original DataGenerator.generate_sinusoid_batch (same
    numpy calls in the same order), so ``np.random.RandomState(1)`` gives the
    original's 600 test tasks.  Each task has K support and K query points
    (the original drew 2K points and split them).  ``oracle`` appends A and phi
    to every input (the oracle baseline: input dimension 3).
    """

    def __init__(self, meta_batch_size, k_support, k_query=None, seed=0, oracle=False,
                 amp_range=(0.1, 5.0), phase_range=(0.0, np.pi), input_range=(-5.0, 5.0)):
        self.meta_batch_size = meta_batch_size
        self.k_support = k_support
        self.k_query = k_support if k_query is None else k_query
        self.oracle = oracle
        self.amp_range, self.phase_range, self.input_range = amp_range, phase_range, input_range
        self.rng = np.random.RandomState(seed)

    def generate(self):
        """(x [T, K+Q, 1], y [T, K+Q, 1], amp [T], phase [T]) in float64, the original's way."""
        t, n = self.meta_batch_size, self.k_support + self.k_query
        amp = self.rng.uniform(self.amp_range[0], self.amp_range[1], [t])
        phase = self.rng.uniform(self.phase_range[0], self.phase_range[1], [t])
        # The original drew each task's inputs in turn (uniform([n, 1]) per task): one
        # draw of [T, n, 1] consumes the same numbers in the same (C) order.
        x = self.rng.uniform(self.input_range[0], self.input_range[1], [t, n, 1])
        y = amp[:, None, None] * np.sin(x - phase[:, None, None])
        return x, y, amp, phase

    def sample(self):
        return self._split(*self.generate())

    def _split(self, x, y, amp, phase):
        """(inputa, labela, inputb, labelb) float32 from generate()'s arrays (any leading axes)."""
        if self.oracle:
            x = np.concatenate([x, np.broadcast_to(amp[..., None, None], x.shape),
                                np.broadcast_to(phase[..., None, None], x.shape)], axis=-1)
        x, y = x.astype(np.float32), y.astype(np.float32)
        k = self.k_support
        return x[..., :k, :], y[..., :k, :], x[..., k:, :], y[..., k:, :]

    def sample_chunk(self, count):
        """The next ``count`` meta-batches at once, each array with a leading [count] axis:
        the numbers ``count`` calls of :meth:`sample` give, bit for bit (one draw of every
        uniform number they use, scaled as ``RandomState.uniform`` scales: low + (high -
        low) * u).  Drawing 100 meta-batches this way costs what drawing 3 one by one does."""
        t, n = self.meta_batch_size, self.k_support + self.k_query
        u = self.rng.random_sample(count * (2 * t + t * n)).reshape(count, -1)

        def scale(v, lo_hi):
            lo, hi = lo_hi
            return lo + (hi - lo) * v
        amp = scale(u[:, :t], self.amp_range)
        phase = scale(u[:, t:2 * t], self.phase_range)
        x = scale(u[:, 2 * t:], self.input_range).reshape(count, t, n, 1)
        y = amp[:, :, None, None] * np.sin(x - phase[:, :, None, None])
        return self._split(x, y, amp, phase)

    def get_state(self):
        name, keys, pos, has_gauss, cached = self.rng.get_state()
        return json.dumps([name, keys.tolist(), int(pos), int(has_gauss), float(cached)])

    def state_after(self, state, batches):
        """The state string after ``batches`` more meta-batches from ``state`` (a
        :meth:`get_state` string), without touching this source."""
        probe = SinusoidTasks(self.meta_batch_size, self.k_support, self.k_query)
        probe.set_state(state)
        t, n = self.meta_batch_size, self.k_support + self.k_query
        probe.rng.random_sample(batches * (2 * t + t * n))
        return probe.get_state()

    def set_state(self, state):
        name, keys, pos, has_gauss, cached = json.loads(state)
        self.rng.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def make_task_source(config, split="train", meta_batch_size=None, seed=None, pool=0):
    """The task source for ``config.datasource``.

    split: 'train' (meta-training), 'val' or 'test' (the original's metaval
    set, chosen by --test_set).  Sinusoid tasks come from one distribution for
    every split, drawn fresh (as the original).  ``pool``: image tasks cycle
    through a fixed pool of that many (0: every task fresh); see
    :class:`maml_tf.data.image_data.EpisodeSampler`.
    """
    mbs = config.meta_batch_size if meta_batch_size is None else meta_batch_size
    seed = config.seed if seed is None else seed
    if config.datasource == "sinusoid":
        return SinusoidTasks(mbs, config.update_batch_size, config.query_per_class, seed=seed,
                             oracle=config.baseline == "oracle")
    from maml_tf.data import image_data  # TF image decoding only where it is needed
    return image_data.make_sampler(config.datasource, config.data_dir, split, config.num_classes,
                                   config.update_batch_size, config.query_per_class, seed=seed,
                                   meta_batch_size=mbs, pool_size=pool)


class Synchronous:
    """The :class:`Prefetcher` interface without a thread, for sources that cost less to
    draw than a thread hand-off (sinusoid: ~15 us per meta-batch; handing it over from a
    thread costs more, and the thread's Python work holds the GIL the step waits for)."""

    def __init__(self, source):
        self.source = source

    def next(self):
        """(batch, state getter): nothing is drawn before the next ``next()``, so the
        source's state when a checkpoint asks for it is the state after this batch (and
        serialising it every iteration would cost more than drawing the batch)."""
        return self.source.sample(), self.source.get_state

    def close(self):
        pass


class Prefetcher:
    """Draws the next meta-batches in a background thread while the step runs.

    ``next()`` returns (batch, state): ``state`` is the source's RNG state right
    after that batch was drawn, so a checkpoint taken after the batch's step
    resumes with exactly the following batch, however far the thread has run ahead.
    """

    def __init__(self, source, depth=2):
        import queue
        import threading
        self.source = source
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def _work(self):
        import queue
        while not self._stop.is_set():
            try:
                item = (self.source.sample(), self.source.get_state(), None)
            except Exception as e:  # hand the error to the consumer
                item = (None, None, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def next(self):
        batch, state, error = self._queue.get()
        if error is not None:
            raise error
        return batch, state

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
