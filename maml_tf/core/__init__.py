"""The meta-learning core: networks as pure functions of weight dicts, the original's
losses, the meta-gradient (meta.py) and the engines that compute it (engines.py), TF1
Adam.  Imports nothing else of maml_tf."""

# The engines' and DropGrad's names, here rather than in engines.py so that a bad flag is
# reported without loading TensorFlow (main.py checks its config before TensorFlow loads);
# engines.py implements each and is where they are chosen.
ENGINES = ("nested", "checkpointed", "truncated", "implicit", "es")
DROPGRAD_TYPES = ("bernoulli", "gaussian")
