"""File plumbing for datasets: atomic writes, and npz members read without loading them whole.

An npz is a zip of ``.npy`` files. A member that is stored uncompressed is
memory-mapped in place (random access at page-cache speed, nothing loaded up
front); a compressed member can only be streamed, so it is read in row chunks
and the caller decides what to keep. Nothing here unpickles: object arrays are
refused.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from numpy.lib import format as npy_format

from disdis.errors import DataError
from disdis.io import atomic_path as io_atomic_path

# Whatever a damaged zip or npy can raise while being read.
READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def file_format(path: str) -> str:
    """What ``path`` holds, from its first bytes (never its name): missing, folder, hdf5, npz
    (a zip archive, possibly damaged), text or other."""
    if os.path.isdir(path):
        return "folder"
    if not os.path.exists(path):
        return "missing"
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            if head[:8] == HDF5_SIGNATURE:
                return "hdf5"
            # an HDF5 file may start with a user block of 512, 1024, 2048, ... bytes
            size, offset = os.path.getsize(path), 512
            while offset + 8 <= size:
                f.seek(offset)
                if f.read(8) == HDF5_SIGNATURE:
                    return "hdf5"
                offset *= 2
    except OSError:
        return "other"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # (or a multi-byte character cut at byte 512: rare, and only a hint)
        return "other"
    return "text" if text and all(c.isprintable() or c in "\t\r\n" for c in text) else "other"


def check_npz_file(path: str, what: str = ".npz file") -> None:
    """Raise a one-line DataError unless ``path`` is a file holding a zip archive (what an npz is),
    before anything reads it: ``np.load`` of another file would try it as a pickle."""
    fmt = file_format(path)
    if fmt == "missing":
        raise DataError(f"{path}: file not found")
    if fmt == "folder":
        raise DataError(f"{path}: a folder, not {'an' if what[0] in '.aeiou' else 'a'} {what}")
    if fmt != "npz" or not zipfile.is_zipfile(path):
        why = {"text": "it holds text, not a zip archive", "hdf5": "it is an HDF5 file, not a zip archive",
               "npz": "a zip archive, truncated or corrupt"}.get(
            fmt, "not a zip archive: truncated, corrupt or another format")
        raise DataError(f"{path}: not a readable {what} ({why})")


@contextlib.contextmanager
def atomic_path(final: str) -> Iterator[str]:
    """:func:`disdis.io.atomic_path` for data files: a temporary path (as a string) next to
    ``final``, renamed over it only on success; the output folder must exist."""
    with io_atomic_path(final, make_parents=False) as tmp:
        yield str(tmp)


@dataclass
class NpyMember:
    """Where one array of an npz lives and what it holds."""

    path: str
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    compressed: bool
    data_offset: int | None  # byte offset of the raw data in the npz, when stored uncompressed

    def _check_plain(self) -> None:
        if self.dtype.hasobject:
            raise DataError(f"{self.path}: array {self.name!r} holds pickled Python objects, which "
                            f"disdis never loads; expected a plain numeric or string array")

    def memmap(self) -> np.memmap:
        """The array mapped read-only in place (stored members only)."""
        self._check_plain()
        assert self.data_offset is not None
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.data_offset,
                         shape=self.shape, order="F" if self.fortran_order else "C")

    def iter_rows(self, rows_per_chunk: int) -> Iterator[np.ndarray]:
        """Stream the array in chunks of leading-axis rows (works for compressed members)."""
        row_shape = self.shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._check_plain()
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.name + ".npy") as f:
                read_npy_header(f)  # skip the header
                for start in range(0, self.shape[0], rows_per_chunk):
                    n = min(rows_per_chunk, self.shape[0] - start)
                    buf = f.read(n * row_bytes)
                    if len(buf) != n * row_bytes:
                        raise EOFError("short read")
                    yield np.frombuffer(buf, dtype=self.dtype).reshape((n,) + row_shape)
        except READ_ERRORS as err:
            raise DataError(f"{self.path}: array {self.name!r} is truncated or corrupt ({err})") from None

    def read(self) -> np.ndarray:
        """The whole array in memory."""
        self._check_plain()
        if self.data_offset is not None:
            return np.array(self.memmap())
        out = np.empty(self.shape, dtype=self.dtype)
        start = 0
        for chunk in self.iter_rows(max(1, (64 << 20) // max(1, self.row_bytes))):
            out[start:start + len(chunk)] = chunk
            start += len(chunk)
        return out

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the ``.npy`` stream ``f``, leaving it at the data."""
    version = npy_format.read_magic(f)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(f)
    if version == (2, 0):
        return npy_format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


def npz_members(path: str) -> dict[str, NpyMember]:
    """The arrays of an npz file by name, from their headers only (no data is read)."""
    check_npz_file(path)
    members: dict[str, NpyMember] = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                with zf.open(info) as f:
                    shape, fortran, dtype = read_npy_header(f)
                    header_len = f.tell()
                if dtype.hasobject:
                    # e.g. dSprites' pickled `metadata`: listed, but never read (see _check_plain).
                    members[name] = NpyMember(path, name, tuple(shape), dtype, fortran, True, None)
                    continue
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if info.file_size != header_len + nbytes:
                    raise DataError(f"{path}: array {name!r} is truncated or corrupt (header says "
                                    f"{shape} {dtype}, member holds {info.file_size - header_len} "
                                    f"bytes, expected {nbytes})")
                offset = None
                if info.compress_type == zipfile.ZIP_STORED:
                    # The local file header (30 bytes + name + extra) precedes the member data.
                    raw.seek(info.header_offset)
                    local = raw.read(30)
                    name_len, extra_len = struct.unpack("<HH", local[26:30])
                    offset = info.header_offset + 30 + name_len + extra_len + header_len
                    if offset + nbytes > os.path.getsize(path):
                        raise DataError(f"{path}: array {name!r} is truncated")
                members[name] = NpyMember(path, name, tuple(shape), dtype, fortran,
                                          info.compress_type != zipfile.ZIP_STORED, offset)
    except DataError:
        raise
    except READ_ERRORS as err:
        raise DataError(f"{path}: not a readable npz file, truncated or corrupt ({err})") from None
    return members


class NpzWriter:
    """Write an npz array by array, large ones streamed in row chunks (never whole in memory).

    Produces a file ``np.load`` reads like one written by ``np.savez`` /
    ``np.savez_compressed``.
    """

    def __init__(self, path: str, compress: bool):
        self._zip = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED,
                                    allowZip64=True, compresslevel=1 if compress else None)

    def add(self, name: str, array: np.ndarray) -> None:
        with self.stream(name, array.shape, array.dtype) as write:
            write(array)

    @contextlib.contextmanager
    def stream(self, name: str, shape: tuple[int, ...], dtype) -> Iterator:
        """Yields ``write(rows)``; the rows written must add up to ``shape`` in C order."""
        dtype = np.dtype(dtype)
        with self._zip.open(name + ".npy", "w", force_zip64=True) as f:
            npy_format.write_array_header_1_0(
                f, {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False,
                    "shape": tuple(int(s) for s in shape)})
            yield lambda rows: f.write(np.ascontiguousarray(rows, dtype=dtype).tobytes())

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> "NpzWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def describe_shape(shape: tuple, dtype) -> str:
    """``(480000, R, R, 3) uint8`` for an expected shape with ``None`` for free sizes."""
    dims = ", ".join("R" if s is None else str(s) for s in shape)
    return f"({dims}{',' if len(shape) == 1 else ''}) {np.dtype(dtype).name}"


def check_array(path: str, name: str, shape: tuple, dtype, expected: tuple, expected_dtype,
                kind_hint: str = "") -> None:
    """Raise a DataError unless ``shape``/``dtype`` match ``expected`` (``None`` = any size,
    and all ``None`` sizes must be equal: square images) and ``expected_dtype``."""
    free = {s for s, e in zip(shape, expected) if e is None}
    ok = (len(shape) == len(expected) and np.dtype(dtype) == np.dtype(expected_dtype)
          and all(e is None or s == e for s, e in zip(shape, expected)) and len(free) <= 1
          and all(s > 0 for s in free))
    if not ok:
        hint = f" ({kind_hint})" if kind_hint else ""
        raise DataError(f"{path}: array {name!r} is {shape} {np.dtype(dtype).name}, expected "
                        f"{describe_shape(expected, expected_dtype)}{hint}")


def require_member(path: str, members: dict[str, NpyMember], name: str, expected: tuple,
                   expected_dtype, kind_hint: str = "") -> NpyMember:
    """The npz member ``name`` after checking its shape and dtype, or a one-line DataError."""
    if name not in members:
        have = ", ".join(sorted(members)) or "none"
        raise DataError(f"{path}: missing array {name!r} (expected "
                        f"{describe_shape(expected, expected_dtype)}; arrays present: {have})")
    m = members[name]
    check_array(path, name, m.shape, m.dtype, expected, expected_dtype, kind_hint)
    return m


class NpzImages:
    """Rows of an image array in an npz: memory-mapped when stored uncompressed (opened lazily
    in each process, so DataLoader workers never share a mapping across fork), else read once."""

    def __init__(self, member: NpyMember):
        self.member = member
        self._array: np.ndarray | None = None
        self._pid = -1

    def take(self, indices: np.ndarray) -> np.ndarray:
        if self._array is None or (self.member.data_offset is not None and self._pid != os.getpid()):
            self._array = (self.member.memmap() if self.member.data_offset is not None
                           else self.member.read())
            self._pid = os.getpid()
        return np.asarray(self._array[indices])

    def __getstate__(self):
        state = self.__dict__.copy()
        if self.member.data_offset is not None:
            state["_array"] = None
        return state
