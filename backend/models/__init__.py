"""The networks and their files: MMLGNet's encoders and heads (mmlgnet), the dense shared-convolution engine
(dense) and the safetensors model file (modelfile)."""
