"""Backbones, the Residual Attention Network and the model registry."""

from rattn.models.registry import MODELS, create_model, list_models, register_model

# Each model file registers its models on import.
# (model files are imported below as they are added)
from rattn.models import preact_resnet, ran, resnet  # registers
