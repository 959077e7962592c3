"""The ``rat`` command: every subcommand and its flags, handed to the module that does its work
(``command.py`` of :mod:`ratkit.train`, :mod:`ratkit.evaluate`, :mod:`ratkit.study`, ...). Nothing
below imports it.

User errors (bad data, bad checkpoint, bad config) print one line on stderr and exit 2.
``rat train`` stopped by SIGTERM or SIGUSR1 exits 75 (EX_TEMPFAIL: preempted, resumable), by
Ctrl-C 130.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .exits import EXIT_PREEMPTED, EXIT_USER_ERROR, UserError


def __getattr__(name: str):
    """The names that moved out of the command line, still importable from it; imported when asked
    for, so that importing the command line stays light."""
    if name in ("run_eval", "checkpoint_data", "eval_state_dir"):
        from .evaluate import command as home
    elif name == "git_commit":
        from .study import commits as home
    elif name == "resolve_device":  # --device: a device that is not there is a UserError
        from .device import resolve_device_flag
        return resolve_device_flag
    elif name == "device_check_main":
        from .bench.device_check import main
        return main
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(home, name)


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    from .choices import NORMS
    from .evaluate import PROTOCOLS

    p.add_argument("--protocol", choices=PROTOCOLS, default="ours",
                   help="ours (default: strongest iterate, steps eps/4, CW-30) or paper (the TRADES/RAT scripts: "
                        "eps 0.031 on CIFAR/SVHN, PGD-20 step 0.003 = eps/10, last iterate, CW-20 kappa 50)")
    p.add_argument("--attacks", default=None,
                   help="comma-separated subset of the protocol's attacks (default: all; ours: "
                        "clean,fgsm,pgd20,cw30,aa; paper: clean,pgd20,cw20,aa)")
    p.add_argument("--n", "--images", dest="n", type=int, default=None,
                   help="evaluate the first N test images (default: all); under torchrun write --images, "
                        "since torchrun reads --n as an abbreviation of its own --nnodes/--nproc-per-node")
    p.add_argument("--aa-n", type=int, default=None,
                   help="run AutoAttack on the first N of those only (default: all of them)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--norm", choices=NORMS, default="Linf")
    p.add_argument("--eps", type=float, default=None,
                   help="the radius, in [0, 1] pixel units (L2: the norm of the whole perturbation); default: the "
                        "one the run recorded (data.eps: your own data's --eps; under the run's norm), else the "
                        "dataset's protocol eps for --norm (Linf 8/255 CIFAR/SVHN, 0.1 (Fashion-)MNIST; L2 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-channels-last", action="store_true",
                   help="keep the model in NCHW layout (default: channels_last, faster on CPU)")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the report as JSON (with a RobustBench-style 'summary' block) and the "
                        "per-example results as CSV beside it (same name, .csv)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="keep each attack's per-batch results here until the report is complete, so an "
                        "interrupted evaluation resumes where it stopped, to identical numbers (default: "
                        "CHECKPOINT.eval-state/ beside the checkpoint file)")
    p.add_argument("--no-resume", action="store_true",
                   help="keep no per-batch results on disk (an interruption loses the evaluation)")
    p.add_argument("--save-adv", type=Path, default=None,
                   help="write each image's worst-case adversarial example (safetensors: x_adv, y, correct, attack)")
    p.add_argument("--compile", choices=("auto", "true", "false"), default="auto",
                   help="torch.compile the model for the attacks (auto: where it was measured to win; "
                        "docs/performance.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def model_code_policy(args):
    """What user model code the command line allows importing: ``--model module:callable`` names
    one, ``--trust-model-code`` allows any."""
    from .models import ModelCodePolicy

    return ModelCodePolicy.from_flags(getattr(args, "model", None), getattr(args, "trust_model_code", False))


def add_model_code_args(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--trust-model-code`` of the commands that load a checkpoint (read by
    :func:`model_code_policy`)."""
    p.add_argument("--model", default=None, metavar="MODULE:CALLABLE",
                   help="allow importing this model code, which the checkpoint names (your own model)")
    p.add_argument("--trust-model-code", action="store_true",
                   help="allow importing whatever model code the checkpoint names")


def cmd_eval(args) -> int:
    from .evaluate.command import eval_command

    eval_command(args, model_code_policy(args))
    return 0


def cmd_train(args) -> int:
    from .train.command import train_command

    return train_command(args, model_code_policy(args), started=_MAIN_STARTED)


def cmd_bench(args) -> int:
    from .bench.command import bench_command

    bench_command(args)
    return 0


def cmd_presets(args) -> int:
    from .config import presets_listing

    print(presets_listing())
    return 0


def cmd_study(args) -> int:
    from .study.command import study_command

    return study_command(args)


def cmd_landscape(args) -> int:
    from .analysis import format_landscapes, run_landscape
    from .analysis.jobs import analysis_command

    analysis_command(run_landscape, format_landscapes, args.checkpoints, args, model_code_policy(args),
                     dim=args.dim, adversarial=args.adversarial, points=args.points, span=args.span)
    return 0


def cmd_hessian(args) -> int:
    from .analysis import format_hessian, run_hessian
    from .analysis.jobs import analysis_command

    analysis_command(run_hessian, format_hessian, args.checkpoint, args, model_code_policy(args), top_k=args.top_k,
                     probes=args.probes, loss=args.loss, max_iter=args.max_iter, tol=args.tol, params=args.params)
    return 0


def cmd_import(args) -> int:
    from .checkpoints.command import import_command

    import_command(args)
    return 0


def cmd_export(args) -> int:
    from .checkpoints import export_checkpoint

    print("wrote {}, {}".format(*export_checkpoint(args.checkpoint, args.out, model_code_policy(args))))
    return 0


def _add_analysis_args(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--n", type=int, default=256, help="use the first N test images (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seeds the directions / probes and the attack")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dataset", default=None, help="default: the checkpoint's dataset")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    add_model_code_args(p)
    p.add_argument("--out", type=Path, default=Path(out), help=f"output directory (default {out})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="rat", description="Randomized Adversarial Training toolkit")
    parser.add_argument("--version", action="version", version=f"ratkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the presets (rat train --config NAME) with what each is")
    p.set_defaults(func=cmd_presets)

    _add_import_command(sub)
    _add_export_command(sub)
    _add_eval_command(sub)
    _add_train_command(sub)
    _add_bench_command(sub)
    _add_study_command(sub)
    _add_landscape_command(sub)
    _add_hessian_command(sub)
    return parser


def _add_eval_command(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint with the fixed protocol")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="run directory (uses best.safetensors), .safetensors file or its .json sidecar")
    p.add_argument("--untrained", metavar="MODEL", default=None,
                   help="evaluate a freshly initialised MODEL instead of a checkpoint (a sanity baseline)")
    p.add_argument("--dataset", default=None, help="default: the checkpoint's dataset (folder, npz: your own files)")
    p.add_argument("--data-dir", default=None, help="dataset directory (else $RAT_DATA_DIR, else the Debian path)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    add_model_code_args(p)
    _add_eval_args(p)
    p.set_defaults(func=cmd_eval)


def _add_train_command(sub) -> None:
    from .choices import NORMS
    from .methods import BASE_METHODS

    p = sub.add_parser("train", help="train (default: RAT-TRADES on Fashion-MNIST, CPU preset) and evaluate",
                       description="Train a run and evaluate its best checkpoint.",
                       epilog=f"Exit codes: 0 done; 1 stopped on a non-finite loss; 2 a user error (one line "
                              f"naming the field); {EXIT_PREEMPTED} stopped by SIGTERM or SIGUSR1 with `last` saved "
                              f"at a step boundary (preempted, resumable: requeue and run rat train --resume "
                              f"RUN_DIR; a `preempted` file in the run directory says the same under torchrun); "
                              f"130 Ctrl-C (progress saved the same way).")
    p.add_argument("--config", default=None, help="preset name in configs/ or a YAML file (default: fmnist-cpu)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config field, e.g. --set optim.lr=0.05 (repeatable); VALUE is parsed as "
                        "YAML (null, true, [1, 2], quoted strings), unlike the other flags, which are typed")

    p.add_argument("--method", choices=tuple(BASE_METHODS), default=None, help="the base method")
    p.add_argument("--rat", dest="rat", action="store_true", default=None, help="wrap the method in RAT")
    p.add_argument("--no-rat", dest="rat", action="store_false", help="train the base method alone")
    p.add_argument("--awp", dest="awp", action="store_true", default=None, help="wrap in AWP")
    p.add_argument("--no-awp", dest="awp", action="store_false")
    p.add_argument("--dataset", default=None,
                   help="a built-in dataset, or your own files: folder (DIR/train/<class>/*.png ...) or npz "
                        "(DIR/train.npz, DIR/test.npz with x, y); with --data-dir DIR and --eps")
    p.add_argument("--model", default=None,
                   help="a built-in model, or your own module.path:callable (e.g. nets:Net; its kwargs with "
                        "--set model.kwargs.K=V); on --resume, naming it again allows importing it")
    p.add_argument("--eps", type=float, default=None,
                   help="threat radius of training, validation and evaluation (data.eps; required for your own "
                        "data), in [0, 1] pixel units: Linf bounds each pixel's change (below 1: 8/255 = 0.0314), "
                        "L2 the norm of the whole perturbation; the training attack's step becomes eps/4 unless "
                        "--set attack.step_size=...")
    p.add_argument("--norm", choices=NORMS, default=None, help="threat model (attack.norm; default Linf)")
    p.add_argument("--trust-model-code", action="store_true",
                   help="on --resume: import the model code (module:callable) the run's config names")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--budget", default=None, metavar="DURATION",
                   help="fit training and the final evaluation into this time (900, 15m, 1.5h; none: no plan): "
                        "the machine's speed is measured first and the run trains fewer steps and runs AutoAttack "
                        "on fewer images where the config does not fit (train.budget_s; the CPU preset has 15m)")
    p.add_argument("--compile", choices=("auto", "true", "false"), default=None,
                   help="torch.compile the model for training and validation (train.compile; auto: where it "
                        "was measured to win, docs/performance.md)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--train-subset", type=int, default=None, help="train on the first N training images")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="run directory (default: runs/<dataset>-<method>-seed<seed>-<time>)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run exactly; with --epochs or --set it may change train.epochs "
                        "(not below the epochs trained), train.time_budget_s, train.checkpoint_every_s, "
                        "train.val_every, train.collapse_*, data.data_dir (the same files) and eval.* (recorded in "
                        "RUN_DIR/config-history.yaml), nothing else")
    p.add_argument("--full-eval", action="store_true", help="evaluate on all test images (AutoAttack too)")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=cmd_train)


def _add_bench_command(sub) -> None:
    from .choices import PRECISIONS
    from .methods import STEP_PRECISIONS

    p = sub.add_parser("bench", help="time and size a training step of every method, with and without RAT")
    p.add_argument("--model", default="smallcnn", help="smallcnn, wrn-16-4, preactresnet18, ... (default smallcnn)")
    p.add_argument("--width", type=float, default=1.0, help="scale the model's width (smallcnn channels, WRN widen)")
    p.add_argument("--dataset", default="fashion-mnist", help="synthetic data of this dataset's shape")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=60, help="timed training steps per configuration (default 60)")
    p.add_argument("--rounds", type=int, default=60,
                   help="interleaved rounds the timed steps are split into, the units the ratios' confidence "
                        "intervals resample (default 60: +-0.024 on RAT-TRADES/TRADES on a 2-core CPU, "
                        "docs/performance.md)")
    p.add_argument("--attack-steps", type=int, default=10, help="PGD steps of the training attack (paper: 10)")
    p.add_argument("--attack-precision", choices=PRECISIONS, default=None,
                   help="the library's training attack precision (default: the default preset's, auto: bfloat16 "
                        "where this device computes it natively, else float32; the naive baselines always run float32)")
    p.add_argument("--precision", choices=STEP_PRECISIONS, default="float32",
                   help="the library's whole training step, as train.precision (default float32; bfloat16 and "
                        "float16 run attack, loss and backward under autocast, float16 with a gradient scaler)")
    p.add_argument("--no-channels-last", action="store_true", help="time the library in NCHW layout")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the library's model, as train.compile: true (compiled before the timed steps)")
    p.add_argument("--configs", default=None, help="comma-separated configurations to time (default: all ten)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory subprocesses")
    p.add_argument("--no-scaling", action="store_true", help="skip seconds per step by batch size and width")
    p.add_argument("--json", type=Path, default=None, help="also write every figure and ratio as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_bench)


def _add_study_command(sub) -> None:
    p = sub.add_parser("study", help="a grid of runs x seeds, evaluated and aggregated (resumable)")
    p.add_argument("--grid", default="core", help="grid file, or a name in configs/studies/ (default: core)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the grid's)")
    p.add_argument("--only", default=None, help="comma-separated configurations of the grid to run")
    p.add_argument("--out", default=None, help="run directories (default: runs/study-<grid>)")
    p.add_argument("--results", default=None, help="small result files and the aggregate "
                                                   "(default: docs/results/<grid>)")
    p.add_argument("--commit", action="store_true", help="git-commit each run's result file as it finishes, "
                   "with the aggregate remade from all result files")
    p.add_argument("--aggregate-only", action="store_true", help="only aggregate the result files there are")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at a time, each in its own process (default 1; more for a GPU or many cores); "
                        "with --executor local or slurm, jobs queued at a time (default all)")
    p.add_argument("--no-aggregate", action="store_true", help="run, but leave the aggregate for later")
    p.add_argument("--evaluate-only", action="store_true",
                   help="train nothing: evaluate and measure the trained runs in --out that have no result yet")
    p.add_argument("--quiet", action="store_true")
    _add_study_executor_args(p)
    p.set_defaults(func=cmd_study)


def _add_study_executor_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("executor", "where each run goes; local and slurm need submitit "
                                         "(pip install 'ratkit[cluster]'), see docs/scaling.md")
    g.add_argument("--executor", choices=("process", "local", "slurm"), default="process",
                   help="process: local processes, --jobs at a time (default); slurm: each run a SLURM job "
                        "that requeues itself when preempted and resumes; local: the same jobs on this machine")
    g.add_argument("--partition", default=None, metavar="P", help="SLURM partition")
    g.add_argument("--time", default=None, metavar="MIN|H:MM:SS",
                   help="each job's time limit, minutes or [D-]H:MM:SS (required with slurm); "
                        "a run that needs longer is requeued and resumes")
    g.add_argument("--gpus-per-job", type=int, default=None, metavar="N",
                   help="GPUs per job (local: the first N are visible)")
    g.add_argument("--cpus-per-job", type=int, default=None, metavar="N", help="CPUs per job")
    g.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="a further sbatch parameter, repeatable: --sbatch account=myproj --sbatch mem=32G")
    g.add_argument("--executor-dir", type=Path, default=None, metavar="DIR",
                   help="submitit's job files and logs (default: OUT/submitit)")


def _add_landscape_command(sub) -> None:
    from .analysis.landscape import ADVERSARIAL

    p = sub.add_parser("landscape", help="loss and accuracy along random filter-normalised weight directions")
    p.add_argument("checkpoints", nargs="+", help="one or more checkpoints (run directories or .safetensors); "
                                                  "several are overlaid on one plot")
    p.add_argument("--dim", type=int, choices=(1, 2), default=1, help="1-D curve or 2-D surface (default 1)")
    p.add_argument("--adversarial", choices=ADVERSARIAL, default="fixed",
                   help="adversarial curve too: 'fixed' batch crafted once at the trained weights, or "
                        "'regenerated' at every point (the AWP paper's); default fixed")
    p.add_argument("--points", type=int, default=21, help="grid points per axis, odd (default 21)")
    p.add_argument("--span", type=float, default=1.0, help="coordinates from -span to span (default 1)")
    _add_analysis_args(p, "landscape")
    p.set_defaults(func=cmd_landscape)


def _add_hessian_command(sub) -> None:
    from .analysis.hessian import PARAMS
    from .analysis.jobs import HESSIAN_LOSSES

    p = sub.add_parser("hessian", help="top Hessian eigenvalues and Hutchinson trace, clean and adversarial loss")
    p.add_argument("checkpoint", help="run directory (uses best.safetensors) or .safetensors file")
    p.add_argument("--top-k", type=int, default=1, help="how many top eigenvalues (default 1)")
    p.add_argument("--probes", type=int, default=100, help="Rademacher probes of the trace estimate (default 100)")
    p.add_argument("--loss", choices=HESSIAN_LOSSES, default="both")
    p.add_argument("--max-iter", type=int, default=100, help="power-iteration steps per eigenvalue at most")
    p.add_argument("--tol", type=float, default=1e-4, help="relative change that stops the power iteration")
    p.add_argument("--params", choices=PARAMS, default="all",
                   help="all trainable parameters, or only weights with dim > 1")
    _add_analysis_args(p, "hessian")
    p.set_defaults(func=cmd_hessian)


def _add_import_command(sub) -> None:
    p = sub.add_parser("import", help="turn a plain PyTorch state dict (TRADES, AWP, ...) into a checkpoint")
    p.add_argument("state_dict", type=Path, help=".pt/.pth file (read with weights_only=True)")
    p.add_argument("--model", default=None,
                   help="ratkit model, e.g. wrn-34-10, preactresnet18 (default: what the file looks like), or your "
                        "own module.path:callable whose state dict the file is (its own keys)")
    p.add_argument("--dataset", required=True, help="dataset the weights were trained on, e.g. cifar10")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--mean", type=float, nargs="+", default=None,
                   help="normalisation the authors' script applied before the network (default 0: none)")
    p.add_argument("--std", type=float, nargs="+", default=None, help="see --mean (default 1)")
    p.add_argument("--data-dir", default=None, help="your own data (--dataset folder or npz): its directory")
    p.add_argument("--eps", type=float, default=None, help="your own data: the threat radius to record")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="your own folder data: force channels")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="your own folder data: the size images are resized to")
    p.add_argument("--head", default=None, help="your own model: the path of its classifier nn.Linear "
                                                "(default: found by the number of classes)")
    p.set_defaults(func=cmd_import)


def _add_export_command(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint's model as a plain state dict plus a JSON recipe")
    p.add_argument("checkpoint", help="run directory (uses best.safetensors) or .safetensors file")
    p.add_argument("--out", type=Path, required=True, help="state dict to write (FILE.pt); FILE.json goes beside")
    add_model_code_args(p)
    p.set_defaults(func=cmd_export)


_MAIN_STARTED: float | None = None  # time.monotonic() when main() began


def main(argv: list[str] | None = None) -> int:
    """The ``rat`` command. For ``rat train`` the preemption signals are caught before anything
    heavy is imported: a notice during start-up exits 75, resumable, not 143 (the default action)."""
    from contextlib import nullcontext

    from .preemption import PreemptAtOnce, Preempted

    global _MAIN_STARTED
    _MAIN_STARTED = time.monotonic()  # where `rat train --budget` counts from: before its heavy imports
    argv = sys.argv[1:] if argv is None else list(argv)
    training = next((a for a in argv if not a.startswith("-")), None) == "train"
    with PreemptAtOnce() if training else nullcontext():
        try:
            code = _main(argv)
        except Preempted as exc:  # before rat train's own handling began (imports, parsing)
            from .train.command import preempted_outside_the_loop

            code = preempted_outside_the_loop(exc)
    from .distributed import active, exit_cleanly

    if active():  # a torchrun worker (python -m ratkit or the rat script): leave without gloo teardown
        exit_cleanly(code)
    return code


def _main(argv: list[str]) -> int:
    from .checkpoints import CheckpointError, InteropError
    from .config import ConfigError
    from .data import DataError
    from .preemption import Preempted

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (UserError, DataError, CheckpointError, ConfigError, InteropError) as exc:
        print(f"rat {args.command}: error: {exc}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except Preempted:
        raise
    except KeyboardInterrupt as exc:
        from .train import TrainingPreempted

        preempted = isinstance(exc, TrainingPreempted)  # e.g. rat study stopped by SIGTERM
        print(f"rat {args.command}: {'preempted' if preempted else 'interrupted'}", file=sys.stderr)
        code = EXIT_PREEMPTED if preempted else 130
    return code
