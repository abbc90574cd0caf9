"""Bring CIFAR-10 to the GPU machine in parts small enough to travel with one call each.

A call to the GPU machine takes at most 64 MiB (working tree included), and CIFAR-10's pickles are
181 MB. Here, once, `split` compresses each pickle with xz (a delta filter first: neighbouring pixels are
alike, so the pickles shrink to about 70 %) and groups them into parts of about 41 MiB under
``.data/`` (ignored by git, so a part travels only when a call names it in ``carry``):

    python benchmarks/gpu/stage_data.py split          # .data/cifar10-part1 .. part3, ~5 min of CPU once

On the GPU machine, each call that carries a part unpacks it into one folder outside the repository,
which stays there as long as the machine is warm (30 s after a call):

    python3 benchmarks/gpu/stage_data.py unpack .data/cifar10-part1 /tmp/cifar-10-batches-py

Every part holds the same MANIFEST.json (every file's SHA-256 and part), so `unpack` checks what it wrote
and says which files the folder still lacks; it exits with status 0 once the folder is complete and 3
while parts are missing. Only the standard library is used: it runs on any Python 3 there.
The call sequence is in benchmarks/gpu/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
FILTERS = [{"id": lzma.FILTER_DELTA, "dist": 1}, {"id": lzma.FILTER_LZMA2, "preset": 6}]
MANIFEST = "MANIFEST.json"
PART_LIMIT = 60 * 2**20  # what the DESIGN allows a part; the rest of the 64 MiB is the working tree's


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _compress(src: Path, dest: Path) -> tuple[str, int]:
    with open(src, "rb") as fin, lzma.open(dest, "wb", format=lzma.FORMAT_XZ, filters=FILTERS) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    return _sha256(src), dest.stat().st_size


def default_src() -> Path:
    """Where lrtrain looks for CIFAR-10 (its ``cifar-10-batches-py`` folder, or the folder itself): under
    $LRTRAIN_DATA, else ../shared/data from the working directory, else beside this checkout; the first
    that holds the pickles (else the first, which `split` then says lacks them)."""
    roots = [Path(os.environ["LRTRAIN_DATA"])] if os.environ.get("LRTRAIN_DATA") else [
        Path.cwd() / ".." / "shared" / "data", ROOT.parent / "shared" / "data"]
    found = [d for r in roots for d in (r / "cifar-10-batches-py", r) if (d / FILES[0]).is_file()]
    return (found or [roots[0] / "cifar-10-batches-py"])[0].resolve()


def split(src: Path, out: Path, parts: int, jobs: int) -> list[Path]:
    """Compress the pickles of `src` into `parts` folders ``out/cifar10-partN`` of about equal size."""
    if not src.is_dir():
        raise SystemExit(f"no CIFAR-10 folder {src}: give --src, or set $LRTRAIN_DATA to the folder holding "
                         "cifar-10-batches-py")
    missing = [f for f in FILES if not (src / f).is_file()]
    if missing:
        raise SystemExit(f"{src} lacks {', '.join(missing)}")
    # Contiguous groups of the (equal-sized) batches; the tiny batches.meta rides with the last.
    big = FILES[:-1]
    per = -(-len(big) // parts)
    groups = [big[i * per:(i + 1) * per] for i in range(parts)]
    groups[-1].append(FILES[-1])
    dirs = [out / f"cifar10-part{i + 1}" for i in range(parts)]
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    jobs_list = [(src / name, dirs[i] / f"{name}.xz") for i, group in enumerate(groups) for name in group]
    with ProcessPoolExecutor(jobs) as pool:
        results = list(pool.map(_compress, *zip(*jobs_list)))
    manifest = {"files": {}, "part": {}}
    for (src_file, _), (digest, _size) in zip(jobs_list, results):
        manifest["files"][src_file.name] = digest
    for i, group in enumerate(groups):
        for name in group:
            manifest["part"][name] = i + 1
    for d in dirs:
        (d / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        size = sum(p.stat().st_size for p in d.iterdir())
        flag = "" if size < PART_LIMIT else "  TOO LARGE: use more parts"
        print(f"{d.relative_to(ROOT) if d.is_relative_to(ROOT) else d}: {size / 2**20:.1f} MiB{flag}")
    return dirs


def unpack(part: Path, dest: Path) -> int:
    """Decompress `part`'s files into `dest`, check them; 0 when `dest` is complete, 3 while files lack."""
    manifest = json.loads((part / MANIFEST).read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for packed in sorted(part.glob("*.xz")):
        target = dest / packed.stem
        tmp = target.with_suffix(".tmp")
        with lzma.open(packed) as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        if _sha256(tmp) != manifest["files"][target.name]:
            tmp.unlink()
            raise SystemExit(f"{packed}: checksum mismatch after decompression (damaged part?)")
        tmp.replace(target)
        print(f"{target}: ok")
    lacking = [n for n, digest in manifest["files"].items() if not (dest / n).is_file()]
    if lacking:
        parts = sorted({manifest["part"][n] for n in lacking})
        print(f"{dest}: still lacks {', '.join(lacking)} (part {', '.join(map(str, parts))})")
        return 3
    print(f"{dest}: CIFAR-10 complete")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="here: compress CIFAR-10 into parts under .data/")
    s.add_argument("--src", type=Path, help="the CIFAR-10 pickles (default: where lrtrain finds them: "
                                            "$LRTRAIN_DATA, else ../shared/data)")
    s.add_argument("--out", type=Path, default=ROOT / ".data")
    s.add_argument("--parts", type=int, default=3)
    s.add_argument("--jobs", type=int, default=2, help="files compressed at once")
    u = sub.add_parser("unpack", help="on the GPU machine: decompress one carried part into DEST")
    u.add_argument("part", type=Path)
    u.add_argument("dest", type=Path, nargs="?", default=Path("/tmp/cifar-10-batches-py"))
    args = p.parse_args(argv)
    if args.command == "split":
        split(args.src or default_src(), args.out, args.parts, args.jobs)
        return 0
    return unpack(args.part, args.dest)


if __name__ == "__main__":
    sys.exit(main())
