"""Deployment artefacts: a model bundle exported to ONNX or TorchScript for serving without xraytriage."""
