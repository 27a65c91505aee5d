"""``python -m maml_tf.crosscheck``: the lockstep against the authors' code (maml_tf/paper/crosscheck.py)."""
import sys

from maml_tf.paper.crosscheck import main

if __name__ == "__main__":
    sys.exit(main())
