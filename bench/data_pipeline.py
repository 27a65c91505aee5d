"""Data pipeline cost against the training step, per data source (usage-line settings).

    python bench/data_pipeline.py [--datasource omniglot|omniglot20|miniimagenet|mini5shot|all]
                                  [--data_dir ./data] [--steps 5]

For each source it reports, as one JSON line: the median time to draw one
meta-batch (sample_s), the median time of one meta-training step (step_s), the
raw share sample_s / step_s, and the wait actually seen by the training loop
with the background prefetcher (wait_s per iteration, wait_share).  Images come
from --data_dir when prepared there, else from random uint8 arrays of the real
split shapes (the sampler's cost does not depend on pixel values).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maml_tf.run.config import Config  # noqa: E402

SOURCES = {
    "omniglot": dict(datasource="omniglot", meta_batch_size=32, update_batch_size=1, update_lr=0.4,
                     num_updates=1),
    "omniglot20": dict(datasource="omniglot", meta_batch_size=16, update_batch_size=1, update_lr=0.1,
                       num_updates=5, num_classes=20),
    "miniimagenet": dict(datasource="miniimagenet", meta_batch_size=4, update_batch_size=1,
                         update_lr=0.01, num_updates=5, num_filters=32, max_pool=True),
    "mini5shot": dict(datasource="miniimagenet", meta_batch_size=4, update_batch_size=5,
                      update_lr=0.01, num_updates=5, num_filters=32, max_pool=True),
}


def make_sampler(cfg, data_dir):
    from maml_tf.data import image_data
    try:
        return image_data.make_sampler(cfg.datasource, data_dir, "train", cfg.num_classes,
                                       cfg.update_batch_size, cfg.query_per_class, seed=0,
                                       meta_batch_size=cfg.meta_batch_size), "prepared data"
    except image_data.DataError:
        shape = (1100, 20, 28, 28, 1) if cfg.datasource == "omniglot" else (64, 600, 84, 84, 3)
        images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        sampler = image_data.EpisodeSampler(images, cfg.num_classes, cfg.update_batch_size,
                                            cfg.query_per_class, rotate=cfg.datasource == "omniglot",
                                            invert=cfg.datasource == "omniglot", seed=0,
                                            meta_batch_size=cfg.meta_batch_size)
        return sampler, "random arrays of the real split shape"


def measure(name, data_dir, steps):
    from maml_tf.data.tasks import Prefetcher
    from maml_tf.run.model import build_model
    cfg = Config(**SOURCES[name], metatrain_iterations=steps)
    sampler, origin = make_sampler(cfg, data_dir)
    sample_times = []
    for _ in range(max(10, steps)):
        t = time.perf_counter()
        batch = sampler.sample()
        sample_times.append(time.perf_counter() - t)
    model = build_model(cfg)
    model.metatrain_step(*batch)  # trace and compile
    step_times, waits = [], []
    prefetch = Prefetcher(sampler)
    try:
        for _ in range(steps):
            t = time.perf_counter()
            batch, _ = prefetch.next()
            waits.append(time.perf_counter() - t)
            t = time.perf_counter()
            model.metatrain_step(*batch)
            step_times.append(time.perf_counter() - t)
    finally:
        prefetch.close()
    sample_s, step_s = float(np.median(sample_times)), float(np.median(step_times))
    wait_s = float(np.median(waits[1:] if len(waits) > 1 else waits))
    return {"source": name, "images": origin, "meta_batch_size": cfg.meta_batch_size,
            "shots": cfg.update_batch_size, "query_per_class": cfg.query_per_class,
            "sample_s": round(sample_s, 5), "step_s": round(step_s, 4),
            "share": round(sample_s / step_s, 4), "wait_s": round(wait_s, 5),
            "wait_share": round(wait_s / step_s, 4)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasource", default="all", choices=["all"] + list(SOURCES))
    p.add_argument("--data_dir", default="./data")
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    for name in (SOURCES if a.datasource == "all" else [a.datasource]):
        print(json.dumps(measure(name, a.data_dir, a.steps)), flush=True)


if __name__ == "__main__":
    main()
