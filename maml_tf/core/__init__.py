"""The meta-learning core: networks as pure functions of weight dicts, the original's
losses, the meta-gradient (meta.py) and the engines that compute it (engines.py), TF1
Adam.  Imports nothing else of maml_tf."""
