"""rsgh: redundancy-resistant stochastic generative hashing (R-SGH) and its SGH baseline.

Reading order for the method: ``neuron`` (the stochastic binary layer and its two gradient
estimators), ``model`` (encoder and decoder), ``objective`` (SGH and R-SGH losses, the
adversary), ``train`` (the loop), ``measures`` (reconstruction error and collapsed units).
"""

__version__ = "0.1.0"
