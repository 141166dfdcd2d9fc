"""``megasr train``: prior-guided fine-tuning of the extractors and CLIP, and MegaSR training.

megasr train pgft-extractor --extractor hed --data photos/ --val-data held/ --out hed.safetensors
megasr train pgft-extractor --extractor depth --source DPT_DIR --data photos/ --out depth-pgft/
megasr train pgft-clip --source CLIP_DIR --data photos/ --out clip-pgft/
megasr train megasr --config configs/train-sd2-base.yaml

The fine-tuned extractors and CLIP are what ``megasr model init`` takes (``--hed``,
``--depth``, ``--seg``, ``--clip``); ``megasr train megasr`` trains the checkpoint it builds.
Training details and a measured run: docs/training.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from megasr.errors import InvalidParameterError

if TYPE_CHECKING:
    from megasr.model.training.distillation import DistillReport, Student

EXTRACTORS = ("hed", "depth", "seg")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train", help="fine-tune the extractors and CLIP, or train MegaSR", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    actions = parser.add_subparsers(dest="train_command", required=True, metavar="ACTION")

    extractor = actions.add_parser(
        "pgft-extractor",
        help="output-level PGFT of HED, depth or segmentation",
        description="The frozen extractor on the HR image teaches the same extractor on the "
        "degraded LR image; its encoder trains, its head stays frozen.",
    )
    extractor.add_argument("--extractor", choices=EXTRACTORS, required=True)
    extractor.add_argument(
        "--source",
        default=None,
        help="HED: bundled (default), .h5 or .safetensors; depth/seg: model folder or hub id",
    )
    _distill_arguments(extractor, learning_rate=1e-5, out_help="HED: FILE.safetensors; else DIR")
    extractor.set_defaults(func=run_pgft_extractor)

    clip = actions.add_parser(
        "pgft-clip",
        help="representation-level PGFT of the CLIP vision tower",
        description="The frozen CLIP vision tower on the HR image teaches the tower on the "
        "degraded LR image (LoRA on query and value, or the last layers).",
    )
    clip.add_argument("--source", required=True, help="CLIP model folder or hub id")
    clip.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (default 8)")
    clip.add_argument(
        "--last-layers", type=int, default=0, help="train the last N layers instead of LoRA"
    )
    _distill_arguments(clip, learning_rate=1e-4, out_help="CLIP model folder to write")
    clip.set_defaults(func=run_pgft_clip)

    megasr = actions.add_parser(
        "megasr",
        help="train a MegaSR checkpoint (config file: TOML or YAML)",
        description="Train the ControlNet, CSMs and MSFMs of a MegaSR checkpoint; multi-GPU "
        "with `accelerate launch -m megasr.cli.main train megasr --config FILE`.",
    )
    megasr.add_argument("--config", type=Path, required=True, metavar="FILE")
    megasr.add_argument("--out", type=Path, default=None, help="overrides training.output_dir")
    megasr.add_argument("--max-steps", type=_positive, default=None,
                        help="overrides training.max_steps")  # fmt: skip
    megasr.add_argument("--resume", default=None, metavar="latest|none|DIR",
                        help="overrides checkpoints.resume")  # fmt: skip
    megasr.add_argument("--quiet", action="store_true", help="no progress bar")
    megasr.set_defaults(func=run_megasr)


def _distill_arguments(
    parser: argparse.ArgumentParser, learning_rate: float, out_help: str
) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, action="append", required=True, metavar="DIR",
                      help="folder of HR images, searched recursively (repeatable)")  # fmt: skip
    data.add_argument("--val-data", type=Path, action="append", default=[], metavar="DIR",
                      help="held-out HR images, measured before and after")  # fmt: skip
    data.add_argument("--crop", type=int, default=256, help="HR crop side (default 256)")
    data.add_argument("--held-out-side", type=int, default=512,
                      help="centre-crop held-out images to this side (default 512)")  # fmt: skip
    data.add_argument("--degradation", type=Path, default=None, metavar="FILE",
                      help="TOML/YAML degradation settings (default: SeeSR's)")  # fmt: skip
    data.add_argument("--workers", type=int, default=0, help="data loader processes")
    optimisation = parser.add_argument_group("optimisation")
    optimisation.add_argument("--steps", type=int, default=1000)
    optimisation.add_argument("--batch-size", type=int, default=8)
    optimisation.add_argument("--lr", type=float, default=learning_rate, dest="learning_rate",
                              help=f"AdamW learning rate (default {learning_rate:g})")  # fmt: skip
    optimisation.add_argument("--weight-decay", type=float, default=1e-2)
    optimisation.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="autocast precision (auto: bfloat16 where it is fast)")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_pgft_extractor(args: argparse.Namespace) -> int:
    from megasr.model.training.pgft_extractors import load_student
    from megasr.settings import get_settings

    source = args.source or "bundled"
    if args.extractor != "hed" and args.source is None:
        raise InvalidParameterError(f"--extractor {args.extractor} needs --source")
    if args.extractor == "hed" and args.out.suffix != ".safetensors":
        raise InvalidParameterError("--out of a HED fine-tuning must end in .safetensors")
    student = load_student(args.extractor, source, get_settings().cache_dir)
    return _distill(args, student, f"{args.extractor} ({source})")


def run_pgft_clip(args: argparse.Namespace) -> int:
    from megasr.model.extractors.clip import ClipEncoder
    from megasr.model.training.pgft_clip import ClipStudent

    clip = ClipEncoder.from_pretrained(args.source)
    student = ClipStudent(clip, lora_rank=args.lora_rank, last_layers=args.last_layers)
    return _distill(args, student, f"CLIP vision ({args.source})")


def run_megasr(args: argparse.Namespace) -> int:
    from megasr.model.device import use_cpu_threads
    from megasr.model.training.megasr_config import read_train_config
    from megasr.model.training.megasr_trainer import MegaSRTrainer
    from megasr.settings import get_settings

    use_cpu_threads(get_settings().cpu_threads)
    config = read_train_config(args.config)
    training = {"output_dir": args.out, "max_steps": args.max_steps}
    training = {key: value for key, value in training.items() if value is not None}
    checkpoints = {} if args.resume is None else {"resume": args.resume}
    config = config.model_copy(
        update={
            "training": config.training.model_copy(update=training),
            "checkpoints": config.checkpoints.model_copy(update=checkpoints),
        }
    )
    trainer = MegaSRTrainer(config)
    summary = trainer.run(quiet=args.quiet)
    if trainer.accelerator.is_main_process:
        loss = "" if summary.last_loss is None else f", last loss {summary.last_loss:.4f}"
        print(
            f"trained steps {summary.first_step} to {summary.last_step} in "
            f"{summary.seconds / 60:.1f} min{loss}"
        )
        if summary.skipped:
            print(f"skipped {summary.skipped} unreadable training files")
        print(f"MegaSR checkpoint: {summary.model_dir}")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _distill(args: argparse.Namespace, student: Student, what: str) -> int:
    from megasr.model.config_files import read_config_file
    from megasr.model.degradation import DegradationConfig, RealESRGANDegradation
    from megasr.model.device import resolve_device, resolve_dtype, use_cpu_threads
    from megasr.model.training.data import CropOptions, TrainingCrops, find_images, load_held_out
    from megasr.model.training.distillation import DistillOptions, distill
    from megasr.settings import get_settings

    use_cpu_threads(get_settings().cpu_threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    config = DegradationConfig()
    if args.degradation is not None:
        config = read_config_file(args.degradation, DegradationConfig)
    options = DistillOptions(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        seed=args.seed,
        workers=args.workers,
        held_out_side=args.held_out_side,
    )
    crops = TrainingCrops(
        find_images(args.data), CropOptions(crop=args.crop, scale=config.scale, seed=args.seed)
    )
    crops.first_readable()
    _writable_parent(args.out)
    held_out, unreadable = load_held_out(args.val_data)
    for line in unreadable:
        print(f"megasr train: skipped held-out {line}", file=sys.stderr)
    _status(f"fine-tuning {what} on {len(crops.sources)} images, {device}, {dtype}", args.quiet)
    report = distill(
        student, crops, RealESRGANDegradation(config), options, device, dtype, held_out, args.quiet
    )
    student.save(args.out)
    print(_report_text(report, args, len(held_out)))
    print(f"wrote {args.out}")
    return 0


def _report_text(report: DistillReport, args: argparse.Namespace, held_out: int) -> str:
    lines = [
        f"{report.steps} steps in {report.seconds / 60:.1f} min (batch {args.batch_size}, "
        f"{args.crop} px crops): loss {report.first_loss:.4f} -> {report.last_loss:.4f} "
        "(mean of the first and last tenth of the steps)"
    ]
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} unreadable training files")
    if held_out:
        lines.append(
            f"held-out, {held_out} images degraded with seed {args.seed}: student on LR vs "
            "pretrained on HR"
        )
        lines.append(f"  {'measure':<12}{'before':>10}{'after':>10}")
        for name, before in report.before.items():
            lines.append(f"  {name:<12}{before:>10.4f}{report.after[name]:>10.4f}")
    return "\n".join(lines)


def _writable_parent(out: Path) -> None:
    """Fail before the training, not after it, when the output cannot be written."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidParameterError(f"{out}: cannot write there: {error.strerror}") from error


def _status(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"megasr train: {message}", file=sys.stderr)
