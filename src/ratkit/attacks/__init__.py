"""Attacks: one PGD engine (``pgd.py``), its objectives (``losses.py``), and AutoAttack."""

from .autoattack import autoattack_correct
from .losses import attack_loss, ce_loss, cw_margin_loss, kl_to_target
from .pgd import BatchShard, PGDConfig, advance_generator, ascent_step, clip_to_image, fgsm_config, pgd, project, random_start

__all__ = [
    "BatchShard", "PGDConfig", "advance_generator", "pgd", "fgsm_config", "project", "ascent_step", "clip_to_image", "random_start",
    "attack_loss", "ce_loss", "cw_margin_loss", "kl_to_target", "autoattack_correct",
]
