"""Judging weight files before anything starts, by their bytes: nothing is unpickled and torch is not imported.

`check_torch_weights` recognises a `torch.save` zip (with `data.pkl`), a TorchScript zip, or the legacy pickle
by its magic number, and refuses a pickle that names Python objects other than tensors and containers (loading
it could run code from the file). Families call it from their `check_checkpoint`.
"""

from __future__ import annotations

import pickletools
import tarfile
import zipfile
from pathlib import Path

from dhgen.errors import UsageError

# torch.save's legacy format starts with the pickled magic number 0x1950a86a20f9469cfc6c (protocol 2).
LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
# Globals a pickle of plain weights refers to (tensors, storages, OrderedDict, builtins); anything else is a
# pickled Python object, which dhgen never unpickles (that could run code from the file).
WEIGHT_GLOBALS = ("torch", "torch._utils", "torch.serialization", "torch.storage", "torch._tensor", "collections")
WEIGHT_GLOBALS += ("__builtin__", "builtins", "_codecs", "numpy")
RESAVE_HINT = "re-save the weights alone: torch.save({'state_dict': model.state_dict()}, 'weights.pth')"


def check_torch_weights(path: Path, hint: str, torchscript: bool = True) -> str:
    """`path` exists and is a PyTorch file holding weights: "zip", "legacy" or (when allowed) "torchscript";
    else `UsageError` naming the file, with `hint` (what the family wants)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist", hint=hint)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} is not a file", hint=hint)
    try:
        kind, objects = checkpoint_kind(path)
    except OSError as exc:
        raise UsageError(f"cannot read checkpoint {path}: {exc.strerror or exc}", hint=hint) from exc
    if kind is None or (kind == "torchscript" and not torchscript):
        raise UsageError(f"{path} is not a PyTorch checkpoint", hint=hint)
    if objects:
        raise UsageError(
            f"{path} holds pickled Python objects ({', '.join(objects[:3])}), not only weights; dhgen does not "
            "unpickle objects, since that could run code from the file",
            hint=RESAVE_HINT,
        )
    return kind


def checkpoint_kind(path: Path) -> tuple[str | None, list[str]]:
    """("zip" | "torchscript" | "legacy" | None, the non-weight globals its pickle names)."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                pickles = [n for n in names if n.rsplit("/", 1)[-1] == "data.pkl"]
                if not pickles:
                    return None, []
                if any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in names):
                    return "torchscript", []  # its classes are TorchScript code, loaded by torch.jit
                return "zip", _object_globals(archive.read(pickles[0]))
        except (zipfile.BadZipFile, EOFError):
            return None, []
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:2] == b"\x80\x02" and head[2 : 2 + len(LEGACY_MAGIC)] == LEGACY_MAGIC:
        return "legacy", []
    if tarfile.is_tarfile(path):  # torch's oldest format: a tar with a "pickle" member
        with tarfile.open(path) as archive:
            return ("legacy", []) if "pickle" in archive.getnames() else (None, [])
    return None, []


def _object_globals(data: bytes) -> list[str]:
    """`module.name` of every global a pickle refers to that plain weights never need (opcodes read, not run)."""
    found, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                module, name = strings[-2], strings[-1]
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if module not in WEIGHT_GLOBALS and not module.startswith("numpy."):
                found.append(f"{module}.{name}")
    except (ValueError, EOFError):  # a torn pickle: torch itself reports it when loading
        pass
    return list(dict.fromkeys(found))
