"""Atomic file output: every result file is written to a temporary file beside its target and then
renamed over it, so that an interrupted run never leaves a truncated checkpoint or table behind."""

import contextlib
import json
import math
import os
import shutil
import tempfile

import torch


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the folder of ``path``; on success rename it to ``path``.

    The rename is atomic on POSIX file systems, so readers see either the old file or the new one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        # mkstemp creates files readable by their owner only; give the usual permissions.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def refuse_to_overwrite(paths, overwrite=False):
    """Raise ``FileExistsError`` naming the first of ``paths`` that exists, unless ``overwrite``:
    nothing that exists is replaced without being asked."""
    if overwrite:
        return
    existing = [path for path in paths if os.path.exists(path)]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]}{more} exists already; pass --overwrite to replace "
                              "it, or choose another --out")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj):
    """``obj`` with every NaN or infinite float replaced by None, which JSON can hold (strict
    JSON has no NaN), and tuples made lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def atomic_write_json(path, obj):
    """Write ``obj`` as strict JSON (NaN and infinities as null), atomically."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


def atomic_copy(source, target):
    """Copy the file ``source`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def atomic_torch_save(path, obj):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_savefig(path, figure, **kwargs):
    """Save a matplotlib figure atomically; the format is taken from the target's extension."""
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=fmt, **kwargs)
