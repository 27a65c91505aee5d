"""Command-line flags: the original main.py's, same names, defaults and meanings, plus a few new ones."""
from absl import flags

# Dataset/method options
flags.DEFINE_string("datasource", "sinusoid", "sinusoid or omniglot or miniimagenet")
flags.DEFINE_integer("num_classes", 5, "number of classes used in classification (e.g. 5-way classification).")
flags.DEFINE_string("baseline", None, "oracle, or None (oracle means task id is input; only suitable for sinusoid)")

# Training options
flags.DEFINE_integer("pretrain_iterations", 0, "number of pre-training iterations.")
flags.DEFINE_integer("metatrain_iterations", 15000, "number of metatraining iterations.")  # 15k for omniglot, 50k for sinusoid
flags.DEFINE_integer("meta_batch_size", 25, "number of tasks sampled per meta-update")
flags.DEFINE_float("meta_lr", 0.001, "the base learning rate of the generator")
flags.DEFINE_integer("update_batch_size", 5, "number of examples used for inner gradient update (K for K-shot learning).")
flags.DEFINE_float("update_lr", 1e-3, "step size alpha for inner gradient update.")  # 0.1 for omniglot
flags.DEFINE_integer("num_updates", 1, "number of inner gradient updates during training.")

# Model options
flags.DEFINE_string("norm", "batch_norm", "batch_norm, layer_norm, or None")
flags.DEFINE_integer("num_filters", 64, "number of filters for conv nets -- 32 for miniimagenet, 64 for omiglot.")
flags.DEFINE_bool("conv", True, "whether or not to use a convolutional network, only applicable in some cases")
flags.DEFINE_bool("max_pool", False, "Whether or not to use max pooling rather than strided convolutions")
flags.DEFINE_bool("stop_grad", False, "if True, do not use second derivatives in meta-optimization (for speed)")

# Logging, saving, and testing options
flags.DEFINE_bool("log", True, "if false, do not log summaries, for debugging code.")
flags.DEFINE_string("logdir", "/tmp/data", "directory for summaries and checkpoints.")
flags.DEFINE_bool("resume", True, "resume training if there is a model available")
flags.DEFINE_bool("train", True, "True to train, False to test.")
flags.DEFINE_integer("test_iter", -1, "iteration to load model (-1 for latest model)")
flags.DEFINE_bool("test_set", False, "Set to true to test on the the test set, False for the validation set.")
flags.DEFINE_integer("train_update_batch_size", -1, "number of examples used for gradient update during training (use if you want to test with a different number).")
flags.DEFINE_float("train_update_lr", -1, "value of inner gradient step step during training. (use if you want to test with a different value)")

# Additions (not in the original)
flags.DEFINE_integer("seed", 0, "seed for the initial weights and the training task stream; the same command twice gives the same losses.")
flags.DEFINE_string("data_dir", "./data", "folder that holds omniglot_resized/ and miniImagenet/ (the original's ./data layout).")
flags.DEFINE_integer("save_interval", 1000, "save a checkpoint every this many iterations (the original: 1000).")
flags.DEFINE_integer("max_to_keep", 10, "number of newest checkpoints kept (the original: 10); raise it to select among more iterations.")
flags.DEFINE_integer("num_query", -1, "query examples per class; -1 keeps the original's rule (K; 15 when meta-training on miniImageNet).")
flags.DEFINE_integer("num_test_tasks", 600, "number of tasks evaluated by --train=False (the original: 600).")
flags.DEFINE_integer("test_seed", 1, "seed of the fixed evaluation tasks of --train=False (the original seeded numpy with 1).")
flags.DEFINE_enum("task_mode", "auto", ["auto", "batched", "loop"], "process the tasks of a meta-batch together (batched) or one after another (loop); both compute the same. auto: the faster on this machine, measured on the first run of a configuration and cached (maml_tf/autotune.py).")
flags.DEFINE_integer("task_pool", 200000, "image data: meta-train on a fixed pool of this many tasks, cycled through in order, as the original (num_total_batches = 200000; its validation cycled through 600); 0 draws every task fresh. Evaluation (--train=False) always uses --num_test_tasks fixed tasks.")
flags.DEFINE_enum("method", "maml", ["maml", "metasgd", "anil", "reptile"], "the meta-learner (maml_tf/methods.py): MAML, Meta-SGD (learned per-parameter inner step sizes), ANIL (inner loop on the output layer alone), Reptile (k inner steps, then theta moves toward the adapted weights; --meta_lr is its outer step size, annealed linearly to 0).")
flags.DEFINE_bool("lslr", False, "MAML++: learned inner step sizes, one per layer (weight tensor) and inner step, starting from --update_lr.")
flags.DEFINE_integer("msl_iterations", 0, "MAML++: the multi-step loss (query losses after every inner step, weights annealed towards the last one) for this many iterations; 0: off.")
flags.DEFINE_bool("bnwb", False, "MAML++: per-step batch-norm offsets and scales (set j normalises the weights of inner step j).")
flags.DEFINE_integer("da_iterations", 0, "MAML++: derivative-order annealing: first-order meta-gradients for this many iterations, then second order; 0: off.")
flags.DEFINE_bool("cosine_annealing", False, "MAML++: anneal the outer step size from --meta_lr to --min_meta_lr over the meta-training iterations (cosine).")
flags.DEFINE_float("min_meta_lr", 1e-5, "--cosine_annealing: the final outer step size.")
flags.DEFINE_bool("nil_test", False, "--method=anil: evaluate without any inner loop (NIL: cosine similarity to the support examples' penultimate representations).")
flags.DEFINE_bool("transductive", True, "evaluation: batch-norm statistics over the whole query set (True, the original's), or each query example normalised with the support set alone (False).")
flags.DEFINE_enum("reptile_inner", "sgd", ["sgd", "adam"], "--method=reptile: the inner optimiser (adam: beta1 = 0, as Reptile's implementation).")
flags.DEFINE_enum("meta_gradient", "nested", ["nested", "checkpointed", "truncated", "implicit", "es"], "how the meta-gradient flows back through the inner steps (maml_tf/engines.py): nested tapes (the original's), checkpointed (the same, in bounded memory), truncated (--truncate_steps), implicit (iMAML: --imaml_lambda, --cg_steps), es (ES-MAML: --es_samples, --es_sigma).")
flags.DEFINE_integer("truncate_steps", -1, "--meta_gradient=truncated: back-propagate through the last this many inner steps (0: first order; --num_updates: exact).")
flags.DEFINE_float("imaml_lambda", 1.0, "--meta_gradient=implicit: strength of the proximal term lambda/2 ||phi - theta||^2.")
flags.DEFINE_integer("cg_steps", 5, "--meta_gradient=implicit: conjugate-gradient iterations of the implicit meta-gradient.")
flags.DEFINE_float("cg_damping", 0.0, "--meta_gradient=implicit: d of the damped system ((1 + d) I + H/(lambda + lam_damping)) v = g that conjugate gradient solves, as the iMAML reference code (its regu_coef, 1.0 in its examples); 0: undamped.")
flags.DEFINE_float("lam_damping", 0.0, "--meta_gradient=implicit: lambda_d of the damped system (the iMAML reference code's lam_damping, 10.0 for its mean loss: N times that here); 0: undamped.")
flags.DEFINE_integer("es_samples", 16, "--meta_gradient=es: antithetic pairs of Gaussian perturbations per meta-gradient.")
flags.DEFINE_float("es_sigma", 0.01, "--meta_gradient=es: standard deviation of the perturbations.")
flags.DEFINE_float("dropgrad", 0.0, "DropGrad: drop each inner-gradient entry with this probability during meta-training (expectation kept); 0: off.")
flags.DEFINE_enum("dropgrad_type", "bernoulli", ["bernoulli", "gaussian"], "DropGrad's mask: bernoulli (0 or 1/(1-rate)) or gaussian (N(1, rate/(1-rate))).")
flags.DEFINE_string("pretrained", "", "a model published in pretrained/ (its name, or a folder): its flags and weights; with --train=False it is tested, otherwise meta-trained further. Flags given on the command line override its manifest's.")
flags.DEFINE_string("init_checkpoint", "", "prefix of a checkpoint written by the original TF1 code (e.g. .../model59000) to start from: tested with --train=False, or meta-trained further.")
flags.DEFINE_enum("distribution", "none", ["none", "mirrored", "multi_worker"], "meta-train under tf.distribute: mirrored (the GPUs of one machine), multi_worker (several machines, set by TF_CONFIG); the meta-batch is split across replicas and must be divisible by their number.")
flags.DEFINE_integer("cpu_devices", 0, "split the CPU into this many logical devices for --distribution (testing without GPUs).")
flags.DEFINE_bool("xla", None, "compile the training step with XLA (True) or not (False); unset: the faster on this machine (measured once and cached; XLA usually wins for the fc nets only).")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "of the conv nets' products (convolutions, their gradients, the output layer): bfloat16 rounds their operands (AVX-512 BF16, AMX, tensor cores) and keeps the weights, batch norm, losses, inner updates and optimiser in float32; opt-in (docs/speed.md). The log folder gets .bf16.")
flags.DEFINE_bool("fuse_steps", True, "sinusoid: run the 99 meta-steps between two summary iterations in one compiled call (the same updates; a call per step costs a third of the step). False: one call per step.")
flags.DEFINE_string("step_times", "", "write the end time of every training iteration (seconds, time.perf_counter) to this .npy file (for bench/main_speed.py).")

FLAGS = flags.FLAGS
