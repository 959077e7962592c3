"""Reading and writing weights: ratkit's own checkpoints (:mod:`.native`: safetensors with the
metadata in its header, atomic, tamper-checked) and other tools' plain PyTorch state dicts
(:mod:`.foreign`: ``rat import`` maps the published layouts onto ratkit's models, ``rat export``
writes a plain state dict and a JSON recipe)."""

from .foreign import (EXPORT_FORMAT, LAYOUTS, InteropError, Layout, detect_layout, export_checkpoint, import_layout,
                      import_state_dict, import_user_model, read_state_dict)
from .native import (FORMAT, VERSION, CheckpointError, atomic_write_bytes, check_model_fits_data, checkpoint_path,
                     load_model, read_checkpoint, read_checkpoint_meta, recorded_data, save_checkpoint, save_model,
                     tensors_sha256, trained_shape)
