"""MLX as a target: trained weights from PyTorch / ONNX / Keras layouts into the layouts of
``mlx.nn`` (docs/mlx.md), converted by the kind of each MLX module, never by its shape.

``import mpslayout.mlx as mm`` works without mlx; mlx is imported only when a function is
given an MLX model or array, or returns mx arrays (``sanitize`` does when mlx is installed).
"""

from .files import load, save
from .rules import (
    conv_transpose_weights,
    conv_transpose_weights_to_torch,
    conv_weights,
    conv_weights_to_torch,
    depthwise_weights,
    gru_params,
    gru_params_to_torch,
    linear_weights,
    linear_weights_to_torch,
    lstm_params,
    lstm_params_to_torch,
    rnn_params,
    rnn_params_to_torch,
)
from .sanitize import sanitize
from .schema import Weights
from .to_torch import to_torch

__all__ = [
    "Weights",
    "conv_transpose_weights",
    "conv_transpose_weights_to_torch",
    "conv_weights",
    "conv_weights_to_torch",
    "depthwise_weights",
    "gru_params",
    "gru_params_to_torch",
    "linear_weights",
    "linear_weights_to_torch",
    "load",
    "lstm_params",
    "lstm_params_to_torch",
    "rnn_params",
    "rnn_params_to_torch",
    "sanitize",
    "save",
    "to_torch",
]
