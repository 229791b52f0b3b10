"""The allowed values of every choice key, in one module that imports nothing.

Configuration is the ground floor: the schema checks a config against these names, and the
code that implements them (models, data, engine, distill, explain, ...) imports them from here,
so the check and the code read one definition and no package has to import upward. Where code
keeps a registry of implementations keyed by these names (``ACTIVATIONS``, ``BLOCKS``, the
distillation methods, the CIFAR layouts), ``tests/test_config.py`` checks that the keys match.
"""

# -- model ----------------------------------------------------------------------------------
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu")
NORMS_1D = ("batch", "layer")  # FlexibleMLP's norm_type
BLOCKS = ("basic", "bottleneck")  # FlexibleCNN's residual block

# -- data -----------------------------------------------------------------------------------
CIFAR_VARIANTS = ("cifar10", "cifar100")
# where an image folder's decoded images live: one device tensor, DataLoader workers, or chosen by size
STORAGES = ("memory", "stream", "auto")

# -- trainer (engine and run builder) ---------------------------------------------------------
DEVICES = ("auto", "cpu", "cuda", "mps")  # cuda:N names one GPU
PRECISIONS = ("auto", "fp32", "bf16")
STRATEGIES = ("auto", "ddp")  # one process, or DistributedDataParallel under torchrun
TEST_ON = ("best", "last")  # which weights the test set scores
SCHEDULER_INTERVALS = ("epoch", "step")  # how often the engine steps the learning-rate schedule
# torch.optim.Muon's learning-rate scaling by matrix shape (null: torch's default, "original")
MUON_ADJUST_LR = ("original", "match_rms_adamw", "spectral_unclamped")

# -- logger ---------------------------------------------------------------------------------
WANDB_MODES = ("auto", "online", "offline", "disabled")  # auto: online with credentials, else offline

# -- distill --------------------------------------------------------------------------------
DISTILL_METHODS = ("kd", "fitnet", "at", "rkd", "dkd", "dist")
CACHE_TEACHER = ("auto", True, False)  # decided by the augmentation (auto), or forced on / off

# -- explain --------------------------------------------------------------------------------
EXPLAIN_METHODS = ("cam", "gradcam")
# whose class map is drawn and scored: the prediction or the label (not "true": Hydra reads it as a boolean)
EXPLAIN_TARGETS = ("pred", "label")
#: what a removed pixel becomes in the deletion / insertion curves, and what that means
EXPLAIN_BASELINES = {
    "mean": "the data set's mean colour (0 after normalisation)",
    "black": "black (pixel value 0)",
    "blur": "the image blurred (Gaussian, sigma = 1/8 of its side)",
}
