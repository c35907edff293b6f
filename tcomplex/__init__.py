"""tcomplex: transformation complexity of ReLU networks.

The core (this package's top level) reads gating states out of any PyTorch
model (:mod:`tcomplex.gating`, stored as bits by :mod:`tcomplex.bits`), estimates their complexity
(:mod:`tcomplex.estimators`) and penalises it during training
(:mod:`tcomplex.ebm`).  The experiment substrate of the book lives in
:mod:`tcomplex.experiments` and is never imported by the core.
"""

from tcomplex.bits import PackedStates, hamming_distances
from tcomplex.estimators import (
    Estimate,
    SaturationWarning,
    activation_rates,
    kde_bandwidth,
    kde_entropy,
    kde_entropy_and_interaction,
    kde_entropy_from_distances,
    kde_interaction_information,
    kde_mutual_information,
    kde_total_correlation,
    layerwise_entropies,
    marginal_entropy_sum,
    plugin_entropy,
    plugin_total_correlation,
    squared_distances,
)
from tcomplex.gating import (
    GATE_KINDS,
    GateInfo,
    GateRecorder,
    NonGatingWarning,
    Recording,
    record_gates,
    record_gates_with_and_without_sampling,
    resolve_layers,
)

__version__ = "0.1.0"

__all__ = [
    "GATE_KINDS",
    "Estimate",
    "GateInfo",
    "GateRecorder",
    "NonGatingWarning",
    "PackedStates",
    "Recording",
    "SaturationWarning",
    "activation_rates",
    "hamming_distances",
    "kde_bandwidth",
    "kde_entropy",
    "kde_entropy_and_interaction",
    "kde_entropy_from_distances",
    "kde_interaction_information",
    "kde_mutual_information",
    "kde_total_correlation",
    "layerwise_entropies",
    "marginal_entropy_sum",
    "plugin_entropy",
    "plugin_total_correlation",
    "squared_distances",
    "record_gates",
    "record_gates_with_and_without_sampling",
    "resolve_layers",
]
