"""Does an artifact compute what its reference computes?

`verification.metrics` holds the comparison itself (shapes to check, tolerances per
precision, the report); `verification.artifact` runs a file and its reference (PyTorch
rebuilt from the checkpoint, or another artifact) on real photographs and random inputs,
with every refusal of `glnet-export verify` (a checkpoint that is not the one the file was
exported from, random weights that cannot be rebuilt); `verification.openvino` adds what
OpenVINO decides on its own (its compute precision)."""
