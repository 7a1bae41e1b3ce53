"""A ResNet backbone as a safetensors folder, and back: `model.safetensors` + `config.json`.

The config names the layout (`arch`, one of peers.models.resnet.ARCHS, and `in_channels`) plus
what a user needs to feed it (`num_features`, input normalization); `load_resnet(folder)`
rebuilds `build_resnet(arch, in_channels)` and loads the tensors strictly (BatchNorm statistics
included), so the loaded backbone computes what the exported one did.

    save_resnet(backbone, "out/", arch="tiny", in_channels=1, extra={"task": "swav", "epoch": 12})
    net = load_resnet("out/")
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from swarm.errors import DataError

from .resnet import ARCHS, ResNet, build_resnet

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "swarm-resnet"
MAX_CONFIG_BYTES = 1 << 20

__all__ = ["save_resnet", "load_resnet", "CONFIG_NAME", "WEIGHTS_NAME"]


def save_resnet(net: ResNet, folder: str | Path, *, arch: str, in_channels: int, extra: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in net.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": FORMAT})
    config = {"format": FORMAT, "arch": arch, "layout": ARCHS[arch].as_dict(), "in_channels": in_channels,
              "num_features": net.num_features, **(extra or {})}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def load_resnet(folder: str | Path) -> ResNet:
    """The backbone a `save_resnet` folder holds; DataError (one line) for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise DataError(f"{folder} is not an exported ResNet: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise DataError(f"{config_path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{config_path} is not JSON: {e}") from None
    arch, channels = (config.get("arch"), config.get("in_channels")) if isinstance(config, dict) else (None, None)
    if config.get("format") != FORMAT or arch not in ARCHS or not isinstance(channels, int) or not 1 <= channels <= 64:
        raise DataError(f"{config_path} is not a {FORMAT} config (format, arch in {', '.join(ARCHS)}, in_channels 1-64)")
    net = build_resnet(arch, in_channels=channels)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise DataError(f"cannot read {weights_path}: {e}") from None
    missing, unexpected = net.state_dict().keys() - tensors.keys(), tensors.keys() - net.state_dict().keys()
    if missing or unexpected:
        raise DataError(f"{weights_path} does not fit a {arch} ResNet ({len(missing)} tensors missing, {len(unexpected)} unexpected)")
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise DataError(f"{weights_path} does not fit a {arch} ResNet: {str(e).splitlines()[-1].strip()}") from None
    return net
