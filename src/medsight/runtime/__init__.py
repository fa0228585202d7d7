"""ONNX export and the ONNX Runtime predictor."""
