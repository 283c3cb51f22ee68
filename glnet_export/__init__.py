"""glnet-export: deploy GLNet to ONNX, OpenVINO and TensorRT, verified against PyTorch."""

__version__ = "0.1.0"
