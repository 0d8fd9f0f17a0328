"""Archive members written as files into class folders by a few threads: the one write loop of the
validation tree and the training ImageFolder tree.

Creating tens of thousands to a million files is the kernel's work (it waits on the file system's
journal), during which Python lets other threads run: each thread takes a contiguous run of the
archive, read with a file handle of its own, checks each image is an image and whole, and writes it
under a temporary name renamed into place (``storage.Store.write_into``). On the first failure the
others stop, and it is raised. Threads rather than processes: 12,000 photo-sized images (1.1 GB)
took 1.8 s of CPU and 30 to 37 s of this project's 2-core machine's disk whether 1, 2 or 4 threads
wrote; the time is the disk's, which more processes would not shorten.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

from ilsvrc_assets import images, storage

if TYPE_CHECKING:
    from ilsvrc_assets.sources import ImageReader

IMAGES_PER_THREAD = 1000  # at least, for another thread to be worth starting

# One image to write: its folder, its file name (also its name in the archive), its offset and size
# in the archive, and how an error names it.
Member = tuple[str, str, int, int, str]


def threads_for(images_to_write: int, threads: int) -> int:
    """How many threads are worth starting for this many images (at most ``threads``)."""
    return max(1, min(threads, images_to_write // IMAGES_PER_THREAD or 1))


def write_members(
    reader: ImageReader,
    root: str,
    chunks: Sequence[Iterable[Member]],
    progress: Callable[[int], object],
) -> int:
    """Write each chunk's members in a thread of its own; ``progress(images written so far)`` about
    twice a second. Chunks may be generators (made lazily, in their thread). Returns how many images
    were written."""
    store = storage.store_for(root)
    done = [0] * len(chunks)
    stop = threading.Event()

    def write_chunk(n: int) -> None:
        with reader.open() as images_read:
            for folder, name, offset, size, where in chunks[n]:
                if stop.is_set():
                    return
                data = images_read.read(name, offset, size)
                images.check_complete(data, images.probe(data, where), where)  # an image, and whole
                store.write_into(folder, name, data)
                done[n] += 1

    with ThreadPoolExecutor(max_workers=max(1, len(chunks))) as pool:
        pending = {pool.submit(write_chunk, n) for n in range(len(chunks))}
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                progress(sum(done))
                for future in finished:
                    if future.exception() is not None:
                        raise future.exception()
        finally:
            stop.set()
    return sum(done)
