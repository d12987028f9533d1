//! ONNX frontend (being written).
