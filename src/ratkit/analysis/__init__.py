"""Flatness tools: loss landscapes along filter-normalised directions and Hessian curvature.

Both measure a model on a given set of examples, in eval mode, without writing to its
parameters, on clean inputs and on adversarial inputs from the one PGD engine.
:mod:`ratkit.analysis.outputs` measures the output scale (logit norm, confidence) that loss-based
flatness depends on. Plotting (:mod:`ratkit.analysis.plots`) imports matplotlib only when called.
"""

from .common import (
    CheckpointExamples,
    adversarial_examples,
    default_attack,
    load_checkpoint_examples,
    loss_and_accuracy,
)
from .hessian import (
    HessianResult,
    HessianSettings,
    hessian_params,
    hessian_spectrum,
    hessian_vector_product,
    hutchinson_trace,
    top_eigenvalues,
)
from .jobs import JobOutput, checkpoint_label, format_hessian, format_landscapes, run_hessian, run_landscape
from .landscape import (
    ADVERSARIAL,
    LandscapeResult,
    LandscapeSettings,
    filter_normalize,
    filter_normalized_directions,
    grid_coordinates,
    loss_landscape,
    random_direction,
)
from .outputs import OutputStatistics, output_statistics
from .plots import plot_landscape_1d, plot_landscape_2d

__all__ = [
    "ADVERSARIAL",
    "CheckpointExamples",
    "HessianResult",
    "HessianSettings",
    "JobOutput",
    "LandscapeResult",
    "LandscapeSettings",
    "OutputStatistics",
    "adversarial_examples",
    "checkpoint_label",
    "default_attack",
    "filter_normalize",
    "format_hessian",
    "format_landscapes",
    "filter_normalized_directions",
    "grid_coordinates",
    "hessian_params",
    "hessian_spectrum",
    "hessian_vector_product",
    "hutchinson_trace",
    "load_checkpoint_examples",
    "loss_and_accuracy",
    "loss_landscape",
    "output_statistics",
    "plot_landscape_1d",
    "plot_landscape_2d",
    "random_direction",
    "run_hessian",
    "run_landscape",
    "top_eigenvalues",
]
