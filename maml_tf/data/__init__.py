"""Task data: sinusoid tasks, Omniglot and miniImageNet episodes (image_data.py), the
safe reader of downloaded pickles.  Imports nothing else of maml_tf."""
