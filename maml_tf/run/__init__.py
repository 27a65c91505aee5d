"""A training run: the configuration (the original's flags and their rules), the model a
configuration builds, the training loop and the test protocol, checkpoints,
tf.distribute, the step's path chosen per machine, the original's TF1 checkpoints,
published models and the SavedModel export.  Imports core, methods and data."""
