"""The method: the stochastic binary neuron, the encoder and decoder, the SGH and R-SGH objectives."""
