"""The GPU runtime (``onnxruntime-gpu``, the ``gpu`` extra) for a machine that has no index.

Two verbs, standard library only (``install`` runs before anything else is there):

``prepare`` (where PyPI is reachable) downloads the ``onnxruntime-gpu`` wheel for the target
Python, keeps only what a Python session on one GPU generation needs, and writes an xz
archive, split into parts small enough to travel, with ``manifest.json``::

    python benchmarks/gpu_runtime.py prepare --out .gpu/ort --sm 90 --part-mb 15

What it drops: ``libonnxruntime.so`` (the C API library; the Python module does not load it),
the TensorRT provider, and from the CUDA provider's ``.nv_fatbin`` section every cubin built
for another GPU architecture than ``--sm`` (90 = Hopper: H100, H200). Each fat binary keeps
its place and size in the file; only its list of cubins gets shorter (the rest is zeros, which
compress to nothing). onnxruntime-gpu 1.31.1 for Python 3.12: 255.6 MB wheel → about 47 MB.

``install`` (on the GPU machine) checks the parts against the manifest, joins them and
unpacks the archive into ``--target`` (a folder of its own, never an existing environment);
plain ``*.whl`` files in the same folder go through ``pip install --no-index --no-deps
--target``::

    python benchmarks/gpu_runtime.py install --from .gpu/ort --target /tmp/reranker-gpu/site

``libpath`` prints the ``nvidia/*/lib`` folders of this interpreter's packages (cuBLAS,
cuDNN, ... as PyTorch's CUDA build installs them), for ``LD_LIBRARY_PATH``.

Exit codes: 0 done, 2 bad usage, 4 parts missing or damaged (the message names them).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

ORT_GPU_VERSION = "1.31.1"
MANIFEST = "manifest.json"
EXIT_PARTS = 4
FATBIN_MAGIC = 0xBA55ED50
CUDA_PROVIDER = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
#: members of the wheel that a Python session on the CUDA provider never loads
DROPPED = (
    "onnxruntime/capi/libonnxruntime.so",
    "onnxruntime/capi/libonnxruntime_providers_tensorrt",
)


class PartsError(Exception):
    """The archive's parts are missing or do not match the manifest."""


# --------------------------------------------------------------------------------------------
# fat binaries


def elf_section(data: bytes | bytearray, name: str) -> tuple[int, int] | None:
    """``(file offset, size)`` of the named section of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        (name_offset,) = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 24)
        return name_offset, offset, size

    _, strings, _ = header(shstrndx)
    wanted = name.encode()
    for index in range(shnum):
        name_offset, offset, size = header(index)
        start = strings + name_offset
        if data[start : data.index(b"\0", start)] == wanted:
            return offset, size
    return None


def slim_fatbins(section: memoryview, keep: Iterable[int]) -> dict[str, int]:
    """Drop, in place, every cubin whose architecture is not in ``keep`` from the fat
    binaries in ``section``. A fat binary with none of ``keep`` is left whole. Returns
    counts: fat binaries, entries kept and dropped, bytes kept and zeroed."""
    wanted = set(keep)
    stats = {"fatbins": 0, "untouched": 0, "kept": 0, "dropped": 0, "bytes_kept": 0}
    stats["bytes_zeroed"] = 0
    pos = 0
    while pos + 16 <= len(section):
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", section, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # fat binaries are 8-byte aligned
            continue
        stats["fatbins"] += 1
        start, end = pos + header_size, pos + header_size + fat_size
        entries: list[tuple[int, int, int]] = []
        entry = start
        while entry < end:
            _kind, _ver, entry_header, payload = struct.unpack_from("<HHIQ", section, entry)
            (arch,) = struct.unpack_from("<I", section, entry + 28)
            entries.append((entry, entry_header + payload, arch))
            entry += entry_header + payload
        chosen = [(s, n) for s, n, arch in entries if arch in wanted]
        if not chosen or len(chosen) == len(entries):
            stats["untouched"] += 1
            stats["kept"] += len(entries)
            pos = end
            continue
        kept = b"".join(bytes(section[s : s + n]) for s, n in chosen)
        section[start : start + len(kept)] = kept
        section[start + len(kept) : end] = bytes(fat_size - len(kept))
        struct.pack_into("<Q", section, pos + 8, len(kept))
        stats["kept"] += len(chosen)
        stats["dropped"] += len(entries) - len(chosen)
        stats["bytes_kept"] += len(kept)
        stats["bytes_zeroed"] += fat_size - len(kept)
        pos = end
    return stats


def slim_cuda_provider(library: bytes, keep: Iterable[int]) -> tuple[bytearray, dict[str, int]]:
    """The CUDA provider library with only the ``keep`` architectures' cubins."""
    data = bytearray(library)
    found = elf_section(data, ".nv_fatbin")
    if found is None:
        raise ValueError("the CUDA provider has no .nv_fatbin section")
    offset, size = found
    stats = slim_fatbins(memoryview(data)[offset : offset + size], keep)
    return data, stats


# --------------------------------------------------------------------------------------------
# prepare


def download_wheel(version: str, python: str, into: Path) -> Path:
    """``pip download`` of the onnxruntime-gpu wheel for CPython ``python`` (e.g. 3.12)."""
    into.mkdir(parents=True, exist_ok=True)
    tag = python.replace(".", "")
    existing = sorted(into.glob(f"onnxruntime_gpu-{version}-cp{tag}-*.whl"))
    if existing:
        return existing[0]
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + [
        "--platform=manylinux2014_x86_64"
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"--python-version={python}",
            "--implementation=cp",
            *platforms,
            "-d",
            str(into),
            f"onnxruntime-gpu=={version}",
        ],
        check=True,
    )
    found = sorted(into.glob(f"onnxruntime_gpu-{version}-cp{tag}-*.whl"))
    if not found:
        raise SystemExit(f"pip download left no onnxruntime_gpu-{version}-cp{tag} wheel in {into}")
    return found[0]


def build_archive(wheel: Path, archive: Path, keep: Iterable[int]) -> dict[str, object]:
    """The wheel's files as an xz tar, slimmed (see the module's doc)."""
    arches = sorted(set(keep))
    info: dict[str, object] = {"wheel": wheel.name, "wheel_bytes": wheel.stat().st_size}
    dropped: list[str] = []
    with zipfile.ZipFile(wheel) as source:
        total = sum(m.file_size for m in source.infolist())
    # a window as large as the biggest library (up to 384 MiB): the cubins repeat far apart
    window = min(384 << 20, max(1 << 20, total))
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": window}]
    with (
        zipfile.ZipFile(wheel) as source,
        lzma.open(archive, "wb", format=lzma.FORMAT_XZ, filters=filters) as packed,
        tarfile.open(fileobj=packed, mode="w") as tar,
    ):
        for member in source.infolist():
            if member.is_dir():
                continue
            if member.filename.startswith(DROPPED):
                dropped.append(member.filename)
                continue
            data = source.read(member)
            if member.filename == CUDA_PROVIDER and arches:
                slim, stats = slim_cuda_provider(data, arches)
                data = bytes(slim)
                info["fatbins"] = stats
            entry = tarfile.TarInfo(member.filename)
            entry.size = len(data)
            entry.mode = (
                0o755 if member.filename.endswith(".so") or ".so." in member.filename else 0o644
            )
            tar.addfile(entry, io.BytesIO(data))
    info["dropped"] = dropped
    info["keep_sm"] = arches
    return info


def split(archive: Path, part_bytes: int) -> list[dict[str, object]]:
    """Cut ``archive`` into ``<name>.part-NN`` files beside it (the archive is removed)."""
    parts: list[dict[str, object]] = []
    with archive.open("rb") as handle:
        index = 0
        while chunk := handle.read(part_bytes):
            part = archive.with_name(f"{archive.name}.part-{index:02d}")
            part.write_bytes(chunk)
            parts.append(
                {
                    "file": part.name,
                    "bytes": len(chunk),
                    "sha256": hashlib.sha256(chunk).hexdigest(),
                }
            )
            index += 1
    archive.unlink()
    return parts


def prepare(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wheel = (
        Path(args.wheel)
        if args.wheel
        else download_wheel(args.version, args.python, Path(args.cache))
    )
    tag = args.python.replace(".", "")
    arch = "-".join(f"sm{s}" for s in args.sm) or "all"
    archive = out / f"onnxruntime-gpu-{args.version}-cp{tag}-{arch}.tar.xz"
    print(f"slimming {wheel} (keeping sm {args.sm or 'all'}) into {archive} ...", file=sys.stderr)
    info = build_archive(wheel, archive, args.sm)
    info["archive"] = archive.name
    info["archive_bytes"] = archive.stat().st_size
    info["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
    info["python"] = args.python
    info["version"] = args.version
    info["parts"] = split(archive, int(args.part_mb * (1 << 20))) if args.part_mb else []
    if not info["parts"]:
        info["parts"] = [
            {"file": archive.name, "bytes": info["archive_bytes"], "sha256": info["sha256"]}
        ]
    (out / MANIFEST).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: info[k] for k in ("archive", "archive_bytes", "parts")}, indent=2))
    return 0


# --------------------------------------------------------------------------------------------
# install


def joined_archive(folder: Path, into: Path) -> Path:
    """The archive of ``folder``'s manifest, its parts checked and joined into ``into``."""
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    parts = manifest["parts"]
    missing = [p["file"] for p in parts if not (folder / p["file"]).is_file()]
    if missing:
        raise PartsError(
            f"{folder}: {len(missing)} of {len(parts)} parts of {manifest['archive']} are "
            f"missing: {', '.join(missing)} (carry each part; a machine given back between "
            "calls loses the parts carried before)"
        )
    target = into / str(manifest["archive"])
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for part in parts:
            data = (folder / part["file"]).read_bytes()
            if len(data) != part["bytes"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
                raise PartsError(f"{folder / part['file']} is damaged (size or sha256 differs)")
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != manifest["sha256"]:
        raise PartsError(f"{target}: the joined archive's sha256 differs from the manifest's")
    return target


def install(source: Path, target: Path) -> list[str]:
    """Install the runtime found in ``source`` into ``target``; returns what was installed."""
    target.mkdir(parents=True, exist_ok=True)
    done: list[str] = []
    with tempfile.TemporaryDirectory(prefix="reranker-gpu-runtime-") as tmp:
        if (source / MANIFEST).is_file():
            archives = [joined_archive(source, Path(tmp))]
        else:
            archives = sorted(source.glob("*.tar.xz"))
        for archive in archives:
            with tarfile.open(archive, "r:xz") as tar:
                tar.extractall(target, filter="data")
            done.append(archive.name)
    wheels = sorted(source.glob("*.whl"))
    if wheels:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--no-cache-dir",
                "--upgrade",
                "--target",
                str(target),
                *map(str, wheels),
            ],
            check=True,
        )
        done += [w.name for w in wheels]
    if not done:
        raise PartsError(f"{source} holds no manifest.json, *.tar.xz or *.whl to install")
    return done


def nvidia_lib_dirs() -> list[str]:
    """``nvidia/**/lib`` folders (holding shared libraries) on this interpreter's path."""
    found: list[str] = []
    for entry in sys.path:
        root = Path(entry or ".") / "nvidia"
        if not root.is_dir():
            continue
        for lib in sorted(root.glob("**/lib")):
            if lib.is_dir() and any(lib.glob("*.so*")) and str(lib) not in found:
                found.append(str(lib))
    return found


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("prepare", help="download, slim, compress and split (needs PyPI)")
    p.add_argument("--out", required=True, help="folder for the parts and manifest.json")
    p.add_argument("--version", default=ORT_GPU_VERSION)
    p.add_argument("--python", default="3.12", help="CPython version of the GPU machine")
    p.add_argument(
        "--sm",
        type=int,
        action="append",
        default=None,
        help="GPU architecture(s) to keep, e.g. 90 for H100/H200 (repeatable; default 90)",
    )
    p.add_argument("--all-arches", action="store_true", help="keep every architecture")
    p.add_argument("--part-mb", type=float, default=15.0, help="part size in MiB (0: no split)")
    p.add_argument("--wheel", default=None, help="an onnxruntime-gpu wheel already downloaded")
    p.add_argument(
        "--cache",
        default=os.path.join(tempfile.gettempdir(), "reranker-gpu-wheels"),
        help="where the downloaded wheel is kept (outside the repository)",
    )
    i = verbs.add_parser("install", help="join, check and unpack (no network)")
    i.add_argument("--from", dest="source", required=True)
    i.add_argument("--target", required=True)
    verbs.add_parser("libpath", help="print nvidia/*/lib folders for LD_LIBRARY_PATH")
    args = parser.parse_args(argv)
    if args.verb == "prepare":
        args.sm = [] if args.all_arches else (args.sm or [90])
        return prepare(args)
    if args.verb == "install":
        try:
            done = install(Path(args.source), Path(args.target))
        except PartsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_PARTS
        print(f"installed {', '.join(done)} into {args.target}", file=sys.stderr)
        return 0
    print(os.pathsep.join(nvidia_lib_dirs()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
