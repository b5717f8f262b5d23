"""What the ONNX adapter knows about its graph: the answers to the adapter
contract's model questions, one module each."""
