"""ratkit: Randomized Adversarial Training (RAT) and the defenses and evaluations around it.

Data flows one way: config -> data + model -> method (attacks via ``ratkit.attacks``)
-> trainer -> checkpoint -> evaluate / analysis.
"""

__version__ = "0.1.0"
