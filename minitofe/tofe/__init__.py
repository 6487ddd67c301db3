"""ToFe on the reference ViT: selector, Gumbel-Softmax, approximator, gather/scatter, stages, losses, MACs."""
