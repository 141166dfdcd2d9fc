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
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from megasr.errors import InvalidParameterError

if TYPE_CHECKING:
    from megasr.model.training.distillation import DistillReport, Student
    from megasr.model.training.pgft_session import PGFTSession

EXTRACTORS = ("hed", "depth", "seg")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="fine-tune the extractors and CLIP, or train MegaSR",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="train_command", required=True, metavar="ACTION")

    extractor = actions.add_parser(
        "pgft-extractor",
        help="output-level PGFT of HED, depth or segmentation",
        description="The frozen extractor on the HR image teaches the same extractor on the "
        "degraded LR image; its encoder trains, its head stays frozen. With --val-data the "
        "pretrained and recalibrated controls are measured before the first step and the "
        "fine-tuned extractor after the last (docs/training.md).",
    )
    _extractor_arguments(extractor)
    distill = extractor.add_argument_group("feature-level distillation (HED)")
    distill.add_argument(
        "--side-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="weight of the BCE on the five side outputs (default 0)",
    )
    distill.add_argument(
        "--feature-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="weight of the relative squared error of the five blocks' "
        "features against the teacher's on the HR (default 0)",
    )
    _distill_arguments(extractor, learning_rate=1e-5, out_help="HED: FILE.safetensors; else DIR")
    extractor.set_defaults(func=run_pgft_extractor)

    evaluate = actions.add_parser(
        "pgft-eval",
        help="measure fine-tuned extractors against the pretrained and recalibrated controls",
        description="Every candidate and both controls on the same degraded photos; the "
        "target is the pretrained extractor on the HR photo (docs/training.md).",
    )
    _extractor_arguments(evaluate)
    evaluate.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a fine-tuned extractor to measure (repeatable)",
    )
    evaluate.add_argument(
        "--train-data",
        type=Path,
        action="append",
        required=True,
        metavar="DIR",
        help="photos that choose the ODS threshold and fit "
        "the recalibration (the fine-tunes' training photos)",
    )
    evaluate.add_argument(
        "--val-data",
        type=Path,
        action="append",
        required=True,
        metavar="DIR",
        help="held-out photos, measured (repeatable)",
    )
    _evaluation_arguments(evaluate)
    evaluate.set_defaults(func=run_pgft_eval)

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

    fetch = actions.add_parser(
        "fetch-base",
        help="download a config's base_models at their revisions, for `megasr model init`",
        description="Every model of the config's base_models section (hub id and revision) "
        "into OUT/sd, OUT/clip, OUT/depth and OUT/seg; prints the `model init` command.",
    )
    fetch.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="training config with base_models",
    )
    fetch.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder for the downloaded models"
    )
    fetch.set_defaults(func=run_fetch_base)

    megasr = actions.add_parser(
        "megasr",
        help="train a MegaSR checkpoint (config file: TOML or YAML)",
        description="Train the ControlNet, CSMs and MSFMs of a MegaSR checkpoint; multi-GPU "
        "with `accelerate launch -m megasr.cli.main train megasr --config FILE`.",
    )
    megasr.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="training config, TOML or YAML (configs/train-sd2-base.yaml)",
    )
    megasr.add_argument("--out", type=Path, default=None, help="overrides training.output_dir")
    megasr.add_argument(
        "--max-steps", type=_positive, default=None, help="overrides training.max_steps"
    )
    megasr.add_argument(
        "--resume", default=None, metavar="latest|none|DIR", help="overrides checkpoints.resume"
    )
    megasr.add_argument("--quiet", action="store_true", help="no progress bar")
    megasr.set_defaults(func=run_megasr)


def _extractor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--extractor", choices=EXTRACTORS, required=True, help="which guidance extractor"
    )
    parser.add_argument(
        "--source",
        default=None,
        help="the pretrained extractor: HED: bundled (default), .h5 or .safetensors; "
        "depth/seg: model folder or hub id",
    )


def _evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """What the PGFT evaluation and the fine-tuning commands share besides the data."""
    parser.add_argument(
        "--held-out-side",
        type=_positive,
        default=512,
        metavar="PX",
        help="centre-crop evaluation photos to this side (default 512)",
    )
    parser.add_argument(
        "--degradation",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML/YAML degradation settings (default: SeeSR's)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the crops, degradations and evaluation (default 0)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where to compute (auto: CUDA when present)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="autocast precision (auto: bfloat16 where it is fast)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the figures and the machine to this JSON file",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _distill_arguments(
    parser: argparse.ArgumentParser, learning_rate: float, out_help: str
) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        metavar="DIR",
        help="folder of HR images, searched recursively (repeatable)",
    )
    data.add_argument(
        "--val-data",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="held-out HR images, measured before and after",
    )
    data.add_argument(
        "--crop", type=_positive, default=256, metavar="PX", help="HR crop side (default 256)"
    )
    data.add_argument(
        "--workers", type=int, default=0, help="data loader processes (default 0: in this process)"
    )
    optimisation = parser.add_argument_group("optimisation")
    optimisation.add_argument(
        "--steps",
        type=_positive,
        default=1000,
        help="optimizer steps in all, a resumed run's included (default 1000)",
    )
    optimisation.add_argument(
        "--batch-size", type=_positive, default=8, help="crops per step (default 8)"
    )
    optimisation.add_argument(
        "--lr",
        type=float,
        default=learning_rate,
        dest="learning_rate",
        help=f"AdamW learning rate (default {learning_rate:g})",
    )
    optimisation.add_argument(
        "--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default 0.01)"
    )
    runs = parser.add_argument_group("resume points")
    runs.add_argument(
        "--checkpoint-every",
        type=_positive,
        default=100,
        metavar="N",
        help="write a resume point every N steps and at the end (default 100)",
    )
    runs.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the resume points go (default: OUT.state next to --out)",
    )
    runs.add_argument(
        "--resume",
        default="latest",
        metavar="latest|none|DIR",
        help="latest (default): continue from the newest resume point, if any; "
        "none: refuse to start over one; or a resume point folder",
    )
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    _evaluation_arguments(parser)


def run_pgft_extractor(args: argparse.Namespace) -> int:
    from megasr.model.training.pgft_extractors import load_student
    from megasr.settings import get_settings

    source = _extractor_source(args)
    if args.extractor == "hed" and args.out.suffix != ".safetensors":
        raise InvalidParameterError("--out of a HED fine-tuning must end in .safetensors")
    student = load_student(
        args.extractor, source, get_settings().cache_dir, args.side_weight, args.feature_weight
    )
    objective = f"output+sides*{args.side_weight:g}+features*{args.feature_weight:g}"
    return _distill(args, student, f"{args.extractor} ({source})", objective, args.extractor)


def run_pgft_eval(args: argparse.Namespace) -> int:
    from megasr.model.training.pgft_extractors import load_student
    from megasr.settings import get_settings

    source = _extractor_source(args)
    cache = get_settings().cache_dir
    candidates = dict(_candidate(text) for text in args.candidate)
    session = _session(args)
    pretrained = load_student(args.extractor, source, cache)
    evaluation = session.evaluation(args.extractor, pretrained, args.train_data, args.val_data)
    rows = evaluation.controls()
    for name, path in candidates.items():
        student = load_student(args.extractor, path, cache).to(session.device)
        rows.append(evaluation.row(name, student.predict))
    extra = {
        "source": source,
        "candidates": candidates,
        "train_data": list(map(str, args.train_data)),
    }
    print(session.report(args.extractor, rows, args.report, extra))
    return 0


def run_pgft_clip(args: argparse.Namespace) -> int:
    from megasr.model.extractors.clip import ClipEncoder
    from megasr.model.training.pgft_clip import ClipStudent

    clip = ClipEncoder.from_pretrained(args.source)
    student = ClipStudent(clip, lora_rank=args.lora_rank, last_layers=args.last_layers)
    objective = f"clip-lora{args.lora_rank}-last{args.last_layers}"
    return _distill(args, student, f"CLIP vision ({args.source})", objective, None)


def run_fetch_base(args: argparse.Namespace) -> int:
    from megasr.model.training.base_models import fetch_base_models
    from megasr.model.training.megasr_config import read_train_config

    config = read_train_config(args.config)
    if config.base_models is None:
        raise InvalidParameterError(f"{args.config} has no base_models section")
    folders = fetch_base_models(config.base_models, args.out)
    options = " ".join(f"--{role} {folder}" for role, folder in folders.items())
    print(f"megasr model init {options} --out {config.model.checkpoint}")
    return 0


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
            f"{summary.seconds / 60:.1f} min{loss} ({trainer.split})"
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


def _distill(
    args: argparse.Namespace, student: Student, what: str, objective: str, kind: str | None
) -> int:
    """Fine-tune ``student``; with held-out photos, measure before the first step and after
    the last (``kind``: the extractor's comparison with its controls; None: CLIP's
    distances to its teacher)."""
    from megasr.model.training.data import CropOptions, TrainingCrops, find_images
    from megasr.model.training.distillation import DistillKey, DistillOptions, distill

    options = DistillOptions(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        seed=args.seed,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
    )
    session = _session(args)
    crops = TrainingCrops(
        find_images(args.data),
        CropOptions(crop=args.crop, scale=session.degradation.config.scale, seed=args.seed),
    )
    crops.first_readable()
    _writable_parent(args.out)
    states = args.state_dir or args.out.with_name(args.out.name + ".state")
    rows, after = [], None
    if args.val_data and kind is not None:
        evaluation = session.evaluation(kind, student, args.data, args.val_data)
        rows = evaluation.controls()
        after = partial(evaluation.row, "fine-tuned", student.predict)
    elif args.val_data:
        held_out = session.photos(args.val_data, "held-out photo")
        rows = [session.distances(student, held_out, "before")]
        after = partial(session.distances, student, held_out, "fine-tuned")
    table = kind or "clip"
    if rows:
        print("held-out photos, before the first step:", flush=True)
        print(session.report(table, rows, None, {}), flush=True)
    _status(f"fine-tuning {what} on {len(crops.sources)} images, {session.describe()}", args.quiet)
    report = distill(
        student,
        crops,
        session.degradation,
        options,
        session.device,
        session.dtype,
        states,
        DistillKey(args.seed, args.batch_size, args.crop, objective),
        args.resume,
        args.quiet,
    )
    student.save(args.out)
    print(_report_text(report, args))
    if after is not None:
        rows.append(after())
        print("held-out photos, after the last step:")
    print(session.report(table, rows, args.report, _run_record(report, args, objective)))
    print(f"wrote {args.out}")
    return 0


def _session(args: argparse.Namespace) -> PGFTSession:
    from megasr.model.training.pgft_session import PGFTSession
    from megasr.settings import get_settings

    return PGFTSession.open(
        args.device,
        args.dtype,
        args.degradation,
        args.seed,
        args.held_out_side,
        args.quiet,
        get_settings().cpu_threads,
    )


def _extractor_source(args: argparse.Namespace) -> str:
    if args.extractor != "hed" and args.source is None:
        raise InvalidParameterError(f"--extractor {args.extractor} needs --source")
    return args.source or "bundled"


def _candidate(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise InvalidParameterError(f"--candidate {text!r}: expected NAME=PATH")
    return name, path


def _report_text(report: DistillReport, args: argparse.Namespace) -> str:
    lines = [
        f"steps {report.first_step} to {report.first_step + report.steps} in "
        f"{report.seconds / 60:.1f} min (batch {args.batch_size}, {args.crop} px crops)"
    ]
    if report.first_loss is not None:
        lines.append(
            f"loss {report.first_loss:.4f} -> {report.last_loss:.4f} "
            "(mean of the first and last tenth of this run's steps)"
        )
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} unreadable training files")
    return "\n".join(lines)


def _run_record(report: DistillReport, args: argparse.Namespace, objective: str) -> dict:
    return {
        "objective": objective,
        "first_step": report.first_step,
        "steps": report.first_step + report.steps,
        "batch_size": args.batch_size,
        "crop": args.crop,
        "learning_rate": args.learning_rate,
        "train_seconds": report.seconds,
        "first_loss": report.first_loss,
        "last_loss": report.last_loss,
        "data": [str(folder) for folder in args.data],
    }


def _writable_parent(out: Path) -> None:
    """Fail before the training, not after it, when the output cannot be written."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidParameterError(f"{out}: cannot write there: {error.strerror}") from error


def _status(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"megasr train: {message}", file=sys.stderr)
