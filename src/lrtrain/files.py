"""Files lrtrain writes and reads: atomic writes, and `torch.load` errors said in one line.

A file is written to a temporary file in the same folder, flushed and fsync'ed, then renamed over its final
name (and the folder fsync'ed), so a crash leaves either the old or the new file, never half of one. A new
file gets the permissions any new file gets under the process's umask, a replaced one keeps its own.
Every torch file is read with ``weights_only=True``: plain data, no pickled code.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import secrets
import stat
import zipfile
from pathlib import Path
from typing import Any, Callable, IO

import torch

from .devices import cuda_problem


def _temporary(path: Path) -> tuple[int, Path]:
    """A new file beside `path`, created with mode 0o666 so that the kernel applies the process's umask as
    it does to any new file (`tempfile.mkstemp` makes it 0o600); replacing a file keeps that file's mode."""
    keep = stat.S_IMODE(os.stat(path).st_mode) if path.is_file() else None
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        if keep is not None:
            os.fchmod(fd, keep)
        return fd, tmp
    raise FileExistsError(f"cannot create a temporary file beside {path}")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes, atomically and durably."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: there is no folder {path.parent}")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder (give a file name in it)")
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # makes the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


# What every reader of a run's summary.json relies on (the trainer writes these and more).
SUMMARY_KEYS = ("method", "epochs", "final_acc", "best_acc", "dense", "compact")


def read_summary(path: str | Path) -> dict[str, Any]:
    """A finished run's summary.json (`path`: the file or its run folder). One that is not JSON, not an
    object, or lacks a field the tables need (`SUMMARY_KEYS`; ``dense``/``compact`` with flops and params)
    raises ValueError naming the file: a file cut short or edited by hand, not a finished run to tabulate."""
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    try:
        summary = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: damaged summary.json, not JSON ({err}); delete it and resume the run "
                         "(lrtrain train RUN --resume) to write it again") from None
    missing = [k for k in SUMMARY_KEYS if k not in summary] if isinstance(summary, dict) else list(SUMMARY_KEYS)
    missing += [f"{k}.{f}" for k in ("dense", "compact") if k not in missing
                for f in ("flops", "params") if not isinstance(summary[k], dict) or f not in summary[k]]
    if missing:
        raise ValueError(f"{file}: damaged summary.json, without {', '.join(missing)}; delete it and resume the "
                         "run (lrtrain train RUN --resume) to write it again")
    return summary


def load_error(err: BaseException) -> str:
    """Why `torch.load` failed on a file, in one line (torch's own texts run to paragraphs, and for a
    damaged file advise loading it with ``weights_only=False``, which would not help)."""
    text = " ".join(str(err).split())
    if isinstance(err, EOFError) or not text:
        return "the file is empty or cut short"
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0].strip()
        if "Unsupported global" in detail:
            found = re.search(r"GLOBAL (\S+) was not an allowed global", detail)
            what = f" (a {found.group(1)})" if found else ""
            return (f"it holds pickled Python objects{what}, not only tensors and plain data: lrtrain reads "
                    "weights only (torch.load(path, weights_only=False) unpickles a file you trust)")
        return f"not a PyTorch file, or a damaged one (unpickling stopped: {detail[:120]})"
    damaged_zip = isinstance(err, OSError) and err.errno == errno.EINVAL  # torch's zip reader, some cut points
    if damaged_zip or isinstance(err, zipfile.BadZipFile) or "central directory" in text or "zip archive" in text:
        return "a damaged PyTorch file: its zip archive is incomplete (cut short while written or copied?)"
    if isinstance(err, (KeyError, pickle.UnpicklingError, ValueError, IndexError)):
        return f"not a PyTorch file, or a damaged one ({type(err).__name__}: {text[:120]})"
    return f"{type(err).__name__}: {text[:300]}"


def load_torch_file(path: str | Path, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a file that cannot be read raises ValueError naming `what`
    and `path` and saying why in one line (a missing file stays FileNotFoundError)."""
    if Path(path).is_dir():
        raise ValueError(f"{path} is a directory, not a {what} file")
    map_location = _device(map_location)
    problem = _archive_problem(path)
    if problem:
        raise ValueError(f"cannot read {what} {path}: {problem}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # damaged files raise many kinds (KeyError, struct.error, UnpicklingError, ...)
        hint = ("; a run's compact_module.pt is the whole pickled module, for torch.load: give lrtrain the run "
                "folder or its compact.pt") if Path(path).name == "compact_module.pt" else ""
        raise ValueError(f"cannot read {what} {path}: {load_error(err)}{hint}") from None


def _device(map_location: Any) -> Any:
    """A device `map_location` that torch.load takes (it refuses ``"cpu:0"``), checked before the file is
    read, so that a device this machine lacks is not reported as a damaged file."""
    if not isinstance(map_location, (str, torch.device)):
        return map_location  # a function or a mapping: torch.load's own forms
    try:
        device = torch.device(map_location)
    except RuntimeError as err:
        raise ValueError(f"map_location {map_location!r} is not a device: {err}") from None
    if device.type == "cpu":
        return "cpu"
    problem = cuda_problem(device)
    if problem:
        raise ValueError(f"map_location {map_location!r}: {problem}")
    return device


def _archive_problem(path: str | Path) -> str | None:
    """What torch.load would not say of the zip archive `path` (torch.save's format): a member whose CRC
    does not match (torch.load does not check them: damaged bytes would load as weights), or a TorchScript
    or torch.export file (torch.load's message about either is a page long). None otherwise, or when
    zipfile cannot read it (torch.load then says what is wrong)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(name.endswith("/constants.pkl") for name in names):
                return "a TorchScript file (torch.jit.load reads it), not a model file lrtrain reads"
            if any(name.endswith("/archive_format") for name in names):  # torch.export.save's package
                return ("an ExportedProgram file (torch.export.load(path).module() runs it), not a model file "
                        "lrtrain reads")
            if not any(info.CRC for info in archive.infolist()):  # saved without CRCs (torch's compute_crc32)
                return None
            damaged = archive.testzip()
    except Exception:  # not a zip, or cut short
        return None
    return damaged and f"damaged (the checksum of its part {damaged!r} does not match its content)"
