"""Pack the CIFAR-10 JPEG folder (or a subset of it) into one file that can travel to a lent GPU.

    python benchmarks/pack_cifar.py [--src ../shared/datasets/CIFAR-10-JPEG]
                                    [--dest .gpu/cifar10_jpeg_subset.npz] [--max-mib 45]

A device call carries at most 64 MiB with the repository (about 14 MiB of it tracked files), and
60,000 small files travel badly, so the check gets ONE file: every test image and a
class-balanced, seeded random subset of the training images, as many as fit in ``--max-mib``.
The JPEG bytes are stored exactly as they are (no re-encoding, which would add a second round
of artefacts), in a deflate-compressed ``.npz`` (numeric arrays only, so ``np.load`` needs no
pickle). Compression pays although JPEG is already compressed: about 620 of each file's ~950
bytes are the same JFIF header and tables, so the whole 56.9 MB folder, all 60,000
images, packs into 17.6 MiB.

  blob     uint8, every file's bytes one after the other
  sizes    int64, each file's length in bytes (offsets are their cumulative sum)
  labels   uint8, class index (classes sorted by folder name, CIFAR-10's own order)
  splits   uint8, 0 = train, 1 = test
  names    uint8, the file names (``0001.jpg`` ...) joined by newlines, UTF-8
  meta     uint8, JSON: format, classes, counts

:func:`unpack` writes them back as ``<dest>/{train,test}/<class>/<name>``, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

FORMAT = "labkit-jpeg-pack-v1"
SPLITS = ("train", "test")
SUFFIXES = (".jpg", ".jpeg", ".png")
ROOT = Path(__file__).resolve().parents[1]


def list_split(split_dir: Path) -> tuple[list[str], dict[str, list[Path]]]:
    """Sorted class folders of ``split_dir`` and each one's sorted image files."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} is not a folder (expected <class>/*.jpg inside)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {c: sorted(p for p in (split_dir / c).iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
             for c in classes}
    return classes, files


def write_pack(dest: Path, entries: list[tuple[bytes, int, int, str]], meta: dict) -> int:
    """Write ``(bytes, label, split, name)`` entries and ``meta`` to ``dest`` atomically; its size."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            blob=np.frombuffer(b"".join(e[0] for e in entries), dtype=np.uint8),
            sizes=np.array([len(e[0]) for e in entries], dtype=np.int64),
            labels=np.array([e[1] for e in entries], dtype=np.uint8),
            splits=np.array([e[2] for e in entries], dtype=np.uint8),
            names=np.frombuffer("\n".join(e[3] for e in entries).encode(), dtype=np.uint8),
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )
    os.replace(tmp, dest)
    return dest.stat().st_size


def pack(src: Path, dest: Path, max_mib: float = 45.0, seed: int = 0,
         train_per_class: int | None = None) -> dict:
    """Write the pack of ``src`` to ``dest``; returns its meta (counts, classes, ``bytes``).

    All test images go in; then ``train_per_class`` training images of every class (default:
    all of them), fewer while the file is larger than ``max_mib``. Which ones is a seeded random
    choice per class; they are stored in name order.
    """
    src, dest = Path(src), Path(dest)
    classes, train_files = list_split(src / "train")
    test_classes, test_files = list_split(src / "test")
    if test_classes != classes:
        raise ValueError(f"{src}: train/ and test/ have different class folders")
    rng = np.random.default_rng(seed)
    order = {c: [train_files[c][i] for i in rng.permutation(len(train_files[c]))] for c in classes}
    index = {c: i for i, c in enumerate(classes)}
    cache: dict[Path, bytes] = {}

    def entry(path: Path, cls: str, split: int) -> tuple[bytes, int, int, str]:
        if path not in cache:
            cache[path] = path.read_bytes()
        return cache[path], index[cls], split, path.name

    test = [entry(p, c, 1) for c in classes for p in test_files[c]]
    k = min(len(v) for v in order.values())
    if train_per_class is not None:
        k = min(k, train_per_class)
    limit = int(max_mib * 2**20)
    while True:
        chosen = [entry(p, c, 0) for c in classes for p in sorted(order[c][:k])]
        meta = {"format": FORMAT, "classes": classes, "train": len(chosen), "test": len(test),
                "train_per_class": k, "source": src.name, "seed": seed}
        size = write_pack(dest, chosen + test, meta)
        if size <= limit or k == 0:
            break
        per_image = size / (len(chosen) + len(test))  # shrink by the excess, a little more
        k = max(0, k - math.ceil(1.02 * (size - limit) / per_image / len(classes)) - 1)
    if size > limit:
        dest.unlink()
        raise ValueError(f"the test images alone exceed --max-mib {max_mib}")
    meta["bytes"] = size
    return meta


def read_meta(pack_file: Path) -> dict:
    """The pack's meta without reading its images."""
    with np.load(pack_file, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{pack_file} is not a {FORMAT} file")
    return meta


def unpack(pack_file: Path, dest: Path) -> dict:
    """Write the pack's images to ``dest/{train,test}/<class>/<name>``; returns its meta.

    A ``dest`` already unpacked from the same file (same size and mtime, recorded in
    ``dest/.unpacked.json``) is kept as it is; anything else there is replaced.
    """
    pack_file, dest = Path(pack_file), Path(dest)
    stat = pack_file.stat()
    stamp = {"file": str(pack_file.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    marker = dest / ".unpacked.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("stamp") == stamp:
                return json.loads(marker.read_text())["meta"]
        except (json.JSONDecodeError, KeyError):
            pass
    if dest.exists():
        shutil.rmtree(dest)
    with np.load(pack_file, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{pack_file} is not a {FORMAT} file")
        blob = z["blob"].tobytes()
        sizes, labels, splits = z["sizes"], z["labels"], z["splits"]
        names = z["names"].tobytes().decode().split("\n")
    classes = meta["classes"]
    for split in SPLITS:
        for c in classes:
            (dest / split / c).mkdir(parents=True, exist_ok=True)
    offset = 0
    for size, label, split, name in zip(sizes.tolist(), labels.tolist(), splits.tolist(), names, strict=True):
        (dest / SPLITS[split] / classes[label] / name).write_bytes(blob[offset : offset + size])
        offset += size
    marker.write_text(json.dumps({"stamp": stamp, "meta": meta}))
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "datasets" / "CIFAR-10-JPEG")
    parser.add_argument("--dest", type=Path, default=ROOT / ".gpu" / "cifar10_jpeg_subset.npz")
    parser.add_argument("--max-mib", type=float, default=45.0, help="size limit of the pack file")
    parser.add_argument("--seed", type=int, default=0, help="which training images are chosen")
    parser.add_argument("--unpack", type=Path, metavar="DIR", help="unpack --dest into DIR instead")
    args = parser.parse_args(argv)
    try:
        if args.unpack:
            meta = unpack(args.dest, args.unpack)
            print(f"unpacked {meta['train']} train + {meta['test']} test images into {args.unpack}")
        else:
            meta = pack(args.src, args.dest, args.max_mib, args.seed)
            print(f"packed {meta['train']:,} train ({meta['train_per_class']:,} per class) + "
                  f"{meta['test']:,} test images into {args.dest} ({meta['bytes'] / 2**20:.1f} MiB)")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
