"""Making the networks run fast on a device: channels-last on the CPU, freed-memory reuse, TensorRT engines on a GPU."""
