"""The tiny run the tests share: the fmnist-cpu preset on synthetic data with a 4-8 channel
SmallCNN, small enough that a run takes seconds on two CPU cores. A test names only where its run
differs: ``tiny_run("train.epochs=2", *QUICK_EVAL)``."""

# synthetic data (64 validation images, 128 training), one epoch, a one-step attack, batches of 32
TINY_RUN = ("data.dataset=synthetic", "data.val_size=64", "data.train_subset=128", "train.epochs=1",
            "model.kwargs.channels=[4,8]", "model.kwargs.hidden=16", "attack.steps=1", "train.batch_size=32",
            "train.val_n=32")
QUICK_EVAL = ("eval.attacks=clean,pgd20", "eval.n=32", "eval.aa_n=null")  # the final evaluation, in seconds


def tiny_run(*changes: str) -> list[str]:
    """The ``--set`` overrides of the tiny run, each of ``changes`` ("key=value") replacing the
    tiny run's value of its key in place, or added after them."""
    settings = dict(s.split("=", 1) for s in TINY_RUN)
    settings.update(c.split("=", 1) for c in changes)
    return [f"{key}={value}" for key, value in settings.items()]
