"""Model export: ONNX graphs, int8/fp16 variants, parity against torch, model cards.

Importing this package needs no torch; the export functions import it when called.
"""

from export.onnx_export import export_cross_encoder, export_encoder

__all__ = ["export_cross_encoder", "export_encoder"]
