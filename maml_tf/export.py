"""``python -m maml_tf.export``: a trained model as a TensorFlow SavedModel (maml_tf/run/export.py)."""
import sys

from maml_tf.run.export import main

if __name__ == "__main__":
    sys.exit(main())
