"""Where a run stands (:class:`Progress`) and the running sums of its current epoch
(:class:`EpochSums`); both are saved with ``last`` as the ``progress`` metadata, so a resume
continues exactly where the run stopped.

The saved form is ``Progress.to_dict()``: the fields by name, the partial epoch's sums as
``{"loss", "correct", "seen", "seconds", "terms"}`` (or null), the history as the metrics rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class EpochSums:
    """Running sums over the steps of an epoch so far, over the examples of every rank: the
    per-example means of the epoch's metrics row are these sums divided by ``seen``.

    Example: ``sums.add(EpochSums(loss=12.8, correct=5, seen=32, seconds=0.04, terms={"natural": 9.6}))``.
    """

    loss: float = 0.0  # sum over examples of the training loss
    correct: int = 0  # adversarial examples classified correctly
    seen: int = 0
    seconds: float = 0.0  # of training steps
    terms: dict[str, float] = field(default_factory=dict)  # sum over examples of each loss term

    def add(self, step: EpochSums) -> None:
        """Add the sums of one more step."""
        self.loss += step.loss
        self.correct += step.correct
        self.seen += step.seen
        self.seconds += step.seconds
        for k, v in step.terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + v

    def images_per_s(self) -> float:
        return self.seen / max(self.seconds, 1e-9)

    def postfix(self) -> dict[str, str]:
        """What the progress bar shows after a step."""
        return {"loss": f"{self.loss / self.seen:.3f}", "adv_acc": f"{self.correct / self.seen:.3f}",
                "img_s": f"{self.images_per_s():.0f}"}

    def row(self, epoch: int, lr: float) -> dict:
        """The training part of the metrics row of ``epoch`` (1-based): means per example."""
        seen = max(self.seen, 1)
        return {"epoch": epoch, "lr": lr, "train_loss": self.loss / seen, "train_adv_acc": self.correct / seen,
                **{f"train_{k}": v / seen for k, v in self.terms.items()},
                "train_seconds": self.seconds, "images_per_s": self.images_per_s()}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EpochSums:
        return cls(loss=d["loss"], correct=d["correct"], seen=d["seen"], seconds=d["seconds"], terms=dict(d["terms"]))


@dataclass
class Progress:
    """Where training stands; saved with ``last`` so a resume continues exactly here."""

    epoch: int = 0            # the epoch in progress (or the next one, if step_in_epoch == 0)
    step_in_epoch: int = 0
    global_step: int = 0
    best_val_robust: float = -1.0
    best_epoch: int = -1
    train_seconds: float = 0.0  # seconds of training steps over the whole run, resumes included
    partial: EpochSums | None = None  # running sums of the epoch in progress
    history: list | None = None  # the metrics rows of the epochs completed

    def to_dict(self) -> dict:
        """The ``progress`` metadata of ``last`` (JSON-able)."""
        return {**vars(self), "partial": None if self.partial is None else self.partial.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> Progress:
        """Inverse of :meth:`to_dict`; reads every ``last`` ratkit has written."""
        partial = d.get("partial")
        return cls(**{**d, "partial": None if partial is None else EpochSums.from_dict(partial)})
