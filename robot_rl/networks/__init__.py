"""Networks: image and state encoders, ensembles computed in one batched forward, the actor and the critics.

Networks know nothing of losses. Every module here is an *ensemble* of N independent members (N = 1 for the
actor): members share no parameters, yet one forward pass computes all of them (grouped convolutions, batched
matrix products), which is what makes a twin or 10-member critic cost little more than one.
"""

from robot_rl.networks.modules import (
    ConvConfig,
    EnsembleConvEncoder,
    EnsembleLayerNorm,
    EnsembleLinear,
    EnsembleMLP,
    EnsembleObservationEncoder,
    MaxPool2x2,
    QEnsemble,
    TanhGaussianActor,
    set_state_statistics,
)

__all__ = [
    "ConvConfig",
    "EnsembleConvEncoder",
    "EnsembleLayerNorm",
    "EnsembleLinear",
    "EnsembleMLP",
    "EnsembleObservationEncoder",
    "MaxPool2x2",
    "QEnsemble",
    "TanhGaussianActor",
    "set_state_statistics",
]
