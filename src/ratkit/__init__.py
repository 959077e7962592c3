"""ratkit: Randomized Adversarial Training (RAT) and the defenses and evaluations around it.

Data flows one way: config -> data + model -> method (attacks via ``ratkit.attacks``)
-> trainer -> checkpoint -> evaluate / analysis.
"""

__version__ = "0.1.0"


def fit(*args, **kwargs):
    """:func:`ratkit.train.fit.fit`: train any ``nn.Module`` on any dataset with the trainer of ``rat train``.

    Example: ``ratkit.fit(MyNet(), my_dataset, eps=8 / 255, epochs=30, run_dir="runs/mine")``"""
    from .train.fit import fit as _fit  # imported on use: `import ratkit` stays free of torch

    return _fit(*args, **kwargs)
