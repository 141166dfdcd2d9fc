"""What ``megasr model info`` says about a checkpoint, read from file headers and a few gates.

Nothing is loaded but the configs, the safetensors headers (shapes) and the LGWAM gate
vectors (one small tensor per block), so describing a multi-gigabyte checkpoint is instant.
Counts are elements of the stored tensors: parameters, plus the few persistent buffers
(normalisation statistics) some extractors keep. The two MegaSR networks are also built from
their configs on the meta device (no memory, no weights) to count the CSMs and MSFMs their
architecture holds, and every one of them must have its weights in the files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from megasr.errors import EngineError
from megasr.model.megasr.adapter import count_modules, is_adapter_key
from megasr.model.megasr.checkpoint import (
    CONTROLNET_DIR,
    FROZEN_PARTS,
    TRAINABLE_PARTS,
    UNET_DIR,
    read_config,
    require_parts,
)
from megasr.model.megasr.networks import MegaSRControlNetModel, MegaSRUNet2DConditionModel

GATE_SUFFIX = ".csm.lgwam.gate"
NETWORKS = {UNET_DIR: MegaSRUNet2DConditionModel, CONTROLNET_DIR: MegaSRControlNetModel}


@dataclass(frozen=True)
class BlockModules:
    """The new modules of one attention block of one network.

    ``gate`` is ``sigmoid(g)`` of the block's LGWAM: the share of image semantics the block
    lets through (0.5 everywhere at initialisation, where ``W`` is zero), as (mean, min, max)
    over its channels; None where the block has no CSM.
    """

    network: str
    block: str
    csm: int
    lgwam: int
    msfm: int
    gate: tuple[float, float, float] | None


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    preset: str
    parameters: dict[str, int]
    modules: dict[str, dict[str, int]]
    """CSMs and MSFMs per network, as its architecture holds them."""
    trainable: int
    frozen: int
    sources: dict[str, str]
    blocks: list[BlockModules]
    shared_connector: int

    def to_text(self) -> str:
        lines = [
            f"MegaSR checkpoint {self.path} (a MegaSRPipeline)",
            f"preset          {self.preset}",
            "parameters:",
        ]
        for name, count in self.parameters.items():
            role = "trainable" if name == CONTROLNET_DIR else "frozen"
            if name == UNET_DIR:
                role = "frozen, but its CSMs and MSFMs"
            lines.append(f"  {name:<22}{count:>15,}  {role}")
        lines.append(f"  {'all trainable':<22}{self.trainable:>15,}")
        lines.append(f"  {'all frozen':<22}{self.frozen:>15,}")
        lines += [
            f"modules: {network} {counts['csm']} CSM, {counts['msfm']} MSFM"
            for network, counts in self.modules.items()
        ]
        lines += self._block_lines()
        lines += [f"source {name}: {source}" for name, source in sorted(self.sources.items())]
        return "\n".join(lines)

    def _block_lines(self) -> list[str]:
        width = max((len(b.block) for b in self.blocks), default=5)
        lines = [
            "modules per attention block (CSM includes its LGWAM and Connector; "
            "gate = sigmoid(g) of the LGWAM, mean [min, max]):",
            f"  {'network':<11}{'block':<{width + 2}}{'CSM':>12}{'LGWAM':>12}{'MSFM':>12}  gate",
        ]
        for b in self.blocks:
            gate = "-" if b.gate is None else f"{b.gate[0]:.4f} [{b.gate[1]:.4f}, {b.gate[2]:.4f}]"
            lines.append(
                f"  {b.network:<11}{b.block:<{width + 2}}{b.csm:>12,}{b.lgwam:>12,}"
                f"{b.msfm:>12,}  {gate}"
            )
        if self.shared_connector:
            lines.append(f"  shared Connectors {self.shared_connector:,}")
        return lines


def checkpoint_info(checkpoint_dir: Path) -> CheckpointInfo:
    config = read_config(checkpoint_dir)
    parts = (*TRAINABLE_PARTS, *FROZEN_PARTS)
    require_parts(checkpoint_dir, parts)
    counts = {part: _count_parameters(checkpoint_dir / part) for part in parts}
    blocks: list[BlockModules] = []
    shared = 0
    modules = {}
    for network, cls in NETWORKS.items():
        files = sorted((checkpoint_dir / network).glob("*.safetensors"))
        modules[network] = _modules_of(cls, checkpoint_dir / network, files)
        for file in files:
            blocks += _blocks(network, file)
            shared += sum(v for k, v in _shapes(file, "shared_connector.").items())
    adapter = sum(
        size
        for file in sorted((checkpoint_dir / UNET_DIR).glob("*.safetensors"))
        for key, size in _shapes(file, "").items()
        if is_adapter_key(key)
    )
    return CheckpointInfo(
        path=checkpoint_dir,
        preset=config.preset,
        parameters=counts,
        modules=modules,
        trainable=counts[CONTROLNET_DIR] + adapter,
        frozen=counts[UNET_DIR] - adapter + sum(counts[p] for p in FROZEN_PARTS),
        sources=config.sources,
        blocks=blocks,
        shared_connector=shared,
    )


def _modules_of(cls: type, folder: Path, files: list[Path]) -> dict[str, int]:
    """The CSMs and MSFMs the network's architecture holds (built on the meta device), each
    of them with its weights in ``files``."""
    with torch.device("meta"):
        network = cls.from_config(cls.load_config(folder))
    stored = {key for file in files for key in _shapes(file, "")}
    absent = sorted(k for k in network.state_dict() if is_adapter_key(k) and k not in stored)
    if absent:
        raise EngineError(
            f"{folder} lacks the weights of {len(absent)} MegaSR module tensors "
            f"(first: {absent[0]})"
        )
    return count_modules(network)


def _blocks(network: str, file: Path) -> list[BlockModules]:
    """One row per attention block holding new modules in ``file``."""
    sizes = _shapes(file, "")
    rows: dict[str, dict[str, int]] = {}
    gates: dict[str, list[torch.Tensor]] = {}
    for key, size in sizes.items():
        if ".csm." in key:
            block, kind = key.split(".transformer_blocks.")[0], "csm"
        elif ".msfm." in key:
            block, kind = key.split(".msfm.")[0], "msfm"
        else:
            continue
        row = rows.setdefault(block, {"csm": 0, "lgwam": 0, "msfm": 0})
        row[kind] += size
        if ".csm.lgwam." in key:
            row["lgwam"] += size
        if key.endswith(GATE_SUFFIX):
            gates.setdefault(block, []).append(_tensor(file, key))
    return [
        BlockModules(network, block, row["csm"], row["lgwam"], row["msfm"], _gate(gates.get(block)))
        for block, row in rows.items()
    ]


def _gate(gates: list[torch.Tensor] | None) -> tuple[float, float, float] | None:
    if not gates:
        return None
    values = torch.sigmoid(torch.cat([g.float().flatten() for g in gates]))
    return values.mean().item(), values.min().item(), values.max().item()


def _shapes(file: Path, prefix: str) -> dict[str, int]:
    """Element count of every tensor of ``file`` whose key starts with ``prefix``, by the rest
    of its key, in file order."""
    with safe_open(file, framework="pt") as weights:
        return {
            key.removeprefix(prefix): math.prod(weights.get_slice(key).get_shape())
            for key in weights.keys()  # noqa: SIM118 (safe_open has no __iter__)
            if key.startswith(prefix)
        }


def _tensor(file: Path, key: str) -> torch.Tensor:
    with safe_open(file, framework="pt") as weights:
        return weights.get_tensor(key)


def _count_parameters(path: Path) -> int:
    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors"))
    return sum(sum(_shapes(file, "").values()) for file in files)
