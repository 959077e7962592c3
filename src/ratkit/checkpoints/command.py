"""``rat import``'s work: a plain state dict turned into a checkpoint, by a published layout onto a
ratkit model or by the user's own model on their own data, and the line that says what it became.
:mod:`ratkit.cli` parses the flags and hands them here."""

from __future__ import annotations

from ..data.source import FILE_DATASETS, DataSource
from ..models import is_user_model
from .foreign import InteropError, import_layout, import_user_model


def import_command(args) -> None:
    """``rat import``: ``--model module:callable`` is the user's model (any ``--dataset``), anything
    else a ratkit model whose layout the file has (a built-in dataset)."""
    if is_user_model(args.model):
        source = DataSource(args.dataset, data_dir=args.data_dir, eps=args.eps,
                            channels=args.channels, image_size=tuple(args.image_size) if args.image_size else None)
        path, meta = import_user_model(args.state_dict, args.model, source, args.out, args.mean, args.std,
                                       head=args.head)
        print(f"{meta['imported_from']['file']}: {args.model} (head {meta['model']['head']}) for {args.dataset}; "
              f"wrote {path}")
        return
    if args.dataset in FILE_DATASETS:
        raise InteropError(f"--dataset {args.dataset}: your own data goes with your own model (--model module:callable)")
    path, meta = import_layout(args.state_dict, args.model, args.dataset, args.out, args.mean, args.std, None)
    kw, source = meta["model"]["kwargs"], meta["imported_from"]
    print(f"{source['file']}: layout {source['layout']} -> {meta['model']['name']} ({meta['dataset']}, "
          f"mean {kw['mean']}, std {kw['std']}); wrote {path}")
