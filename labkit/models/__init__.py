"""Model families; each knows nothing of data loading or training."""

from labkit.models.cnn import BasicBlock, Bottleneck, FlexibleCNN
from labkit.models.convpool import ConvPoolNet
from labkit.models.layers import count_parameters
from labkit.models.mlp import FlexibleMLP, MLPBlock
from labkit.models.summary import describe_model

__all__ = ["BasicBlock", "Bottleneck", "ConvPoolNet", "FlexibleCNN", "FlexibleMLP", "MLPBlock",
           "count_parameters", "describe_model"]
