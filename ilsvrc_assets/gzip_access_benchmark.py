"""Reading images out of a gzip-compressed tar: one streaming pass, or a seekable index of the stream?

    python -m ilsvrc_assets.gzip_access_benchmark --out /tmp/gzbench [--images 20000] [--kb 15]

The Hugging Face copy of ILSVRC2012 (``ILSVRC/imagenet-1k``) holds its images in gzip-compressed
tars, which cannot be seeked. Writes a stand-in (a gzip tar of ``--images`` noise JPEGs of about
``--kb`` KB, which compress as little as photographs do) and measures, on it:

- ``stream``: one pass of :func:`tar_reader.stream_members` over the decompressed stream, every
  image's bytes routed to one of the shards (what a build that writes all shards at once costs);
- ``gzip_index``: this project's choice (:mod:`ilsvrc_assets.gzip_index`): the members listed and
  the seek-point index built in one pass, then one shard's images read with only the point table
  in memory;
- ``indexed_gzip`` and ``rapidgzip`` as they come: building a seek-point index of the stream (and its size on
  disk), then reading one shard's images (a random ``1/--shards`` of them, in shuffled order)
  through a reader opened from the saved index, as a shard-writing worker does.

Prints seconds, MB/s of decompressed data and µs per image for each. The README's "Hugging Face"
section quotes its figures.
"""

from __future__ import annotations

import argparse
import gzip
import io
import random
import tarfile
import time
from pathlib import Path

from ilsvrc_assets import tar_reader


def write_stand_in(path: Path, images: int, kb: int, seed: int = 0) -> list[tuple[str, int, int]]:
    """A gzip tar of ``images`` noise JPEGs (300 distinct ones, reused under other names)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    side = int((kb * 1024 / 1.6) ** 0.5)  # noise JPEG at quality 90: about 1.6 bytes per pixel
    distinct = []
    for _ in range(300):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
            buffer, "JPEG", quality=90
        )
        distinct.append(buffer.getvalue())
    order = random.Random(seed).choices(range(len(distinct)), k=images)
    with gzip.open(path, "wb", compresslevel=6) as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        for i, which in enumerate(order):
            info = tarfile.TarInfo(f"n{i // 1300:08d}_{i}_n{i // 1300:08d}.JPEG")
            info.size = len(distinct[which])
            tar.addfile(info, io.BytesIO(distinct[which]))
    with tar_reader.open_gzip_tar(path) as stream:
        return [tuple(m) for m, _ in tar_reader.stream_members(stream, path.name, wanted=lambda _: False)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--kb", type=int, default=15)
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--spacing-mb", type=float, nargs="+", default=[1.0, 4.0])  # indexed_gzip's
    args = parser.parse_args(argv)
    import indexed_gzip

    try:
        import rapidgzip  # not a dependency of the project: pip install rapidgzip to compare it too
    except ImportError:
        rapidgzip = None

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "stand_in.tar.gz"
    start = time.perf_counter()
    members = write_stand_in(path, args.images, args.kb)
    tar_bytes = max(offset + size for _, offset, size in members)
    print(
        f"stand-in: {len(members):,} images, {tar_bytes / 1e6:.0f} MB as tar, "
        f"{path.stat().st_size / 1e6:.0f} MB gzip-compressed (written in {time.perf_counter() - start:.1f} s)"
    )
    mb = tar_bytes / 1e6

    start = time.perf_counter()
    shards: list[list[bytes]] = [[] for _ in range(args.shards)]
    with tar_reader.open_gzip_tar(path) as stream:
        for i, (_member, data) in enumerate(tar_reader.stream_members(stream, path.name)):
            shards[i % args.shards].append(data)  # type: ignore[arg-type]
            if len(shards[i % args.shards]) > 64:
                shards[i % args.shards].clear()  # written out
    seconds = time.perf_counter() - start
    print(f"stream, one pass routing to {args.shards} shards: {seconds:.2f} s, {mb / seconds:.0f} MB/s")

    shard = random.Random(1).sample(members, len(members) // args.shards)
    picked = sum(size for _, _, size in shard)

    def random_reads(file) -> float:
        start = time.perf_counter()
        for name, offset, size in shard:
            file.seek(offset)
            if len(file.read(size)) != size:
                raise RuntimeError(name)
        return time.perf_counter() - start

    from ilsvrc_assets import gzip_index

    index = args.out / "gzip_index.gzidx"
    start = time.perf_counter()
    gzip_index.index_gzip_tar(path, index, lambda member: None)
    built = time.perf_counter() - start
    start = time.perf_counter()
    with gzip_index.GzipIndex(path, index) as file:
        opened = time.perf_counter() - start
        read = time.perf_counter()
        for name, offset, size in shard:
            if len(file.read(offset, size)) != size:
                raise RuntimeError(name)
        read = time.perf_counter() - read
    print(
        f"gzip_index (members + index in one pass, spacing {gzip_index.SPACING / 2**20:g} MiB): index "
        f"{built:.2f} s ({mb / built:.0f} MB/s), {index.stat().st_size / 1e6:.1f} MB; "
        f"open {opened * 1e3:.0f} ms; "
        f"{len(shard)} random reads {read:.2f} s ({read / len(shard) * 1e6:.0f} µs each, "
        f"{picked / 1e6 / read:.1f} MB/s of images)"
    )

    for spacing in args.spacing_mb:
        index = args.out / f"indexed_gzip_{spacing}.idx"
        start = time.perf_counter()
        with indexed_gzip.IndexedGzipFile(str(path), spacing=int(spacing * 2**20)) as file:
            file.build_full_index()
            file.export_index(str(index))
        built = time.perf_counter() - start
        start = time.perf_counter()
        # A small read buffer: the default (4 x spacing) decompresses 4 MiB for every read.
        with indexed_gzip.IndexedGzipFile(str(path), index_file=str(index), buffer_size=1 << 16) as file:
            opened = time.perf_counter() - start
            read = random_reads(file)
        print(
            f"indexed_gzip, spacing {spacing} MiB: index {built:.2f} s ({mb / built:.0f} MB/s), "
            f"{index.stat().st_size / 1e6:.1f} MB; open {opened * 1e3:.0f} ms; "
            f"{len(shard)} random reads {read:.2f} s ({read / len(shard) * 1e6:.0f} µs each, "
            f"{picked / 1e6 / read:.1f} MB/s of images)"
        )

    for parallelization in (1, 2) if rapidgzip is not None else ():
        index = args.out / f"rapidgzip_{parallelization}.idx"
        start = time.perf_counter()
        with rapidgzip.RapidgzipFile(str(path), parallelization=parallelization, chunk_size=1 << 18) as file:
            file.seek(0, io.SEEK_END)
            file.export_index(str(index))
        built = time.perf_counter() - start
        start = time.perf_counter()
        with rapidgzip.RapidgzipFile(str(path), parallelization=1, chunk_size=1 << 18) as file:
            file.import_index(str(index))
            opened = time.perf_counter() - start
            read = random_reads(file)
        print(
            f"rapidgzip, {parallelization} thread(s), 256 KiB chunks: "
            f"index {built:.2f} s ({mb / built:.0f} MB/s), "
            f"{index.stat().st_size / 1e6:.1f} MB; open {opened * 1e3:.0f} ms; "
            f"{len(shard)} random reads {read:.2f} s ({read / len(shard) * 1e6:.0f} µs each, "
            f"{picked / 1e6 / read:.1f} MB/s of images)"
        )


if __name__ == "__main__":
    main()
