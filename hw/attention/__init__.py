"""The attention core and its units (one file each; :mod:`.core` composes them)."""

from .common import (PLANE_LSB, PLANE_MSB, TENSOR_K, TENSOR_Q, TENSOR_V, Geometry,
                     attention_command_layout, mask_layout, mask_request_layout, mem_request_layout,
                     mem_response_layout, out_layout, plane_lane_bits, probs_layout)
from .core import AttentionCore

__all__ = ["AttentionCore", "Geometry", "TENSOR_Q", "TENSOR_K", "TENSOR_V", "PLANE_MSB", "PLANE_LSB",
           "attention_command_layout", "mem_request_layout", "mem_response_layout",
           "mask_request_layout", "mask_layout", "probs_layout", "out_layout", "plane_lane_bits"]
