import os
import time

import pytest

from ilsvrc_assets import fileio


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with fileio.atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_only_when_complete(tmp_path):
    target = tmp_path / "out.txt"
    fileio.atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_write(target, "w") as f:
            f.write("new")
            raise RuntimeError
    assert target.read_text() == "old"
    fileio.atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_stale_temp_files_are_recognised_and_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".x{fileio.TEMP_MARKER}{int(dead.stdout)}-abcd"  # its writer has exited
    stale.write_bytes(b"partial")
    live = fileio.temp_path_for(tmp_path / "y")  # this process: a writer still at work
    live.write_bytes(b"in progress")
    (tmp_path / "keep").write_bytes(b"")
    assert fileio.is_temp_path(stale) and fileio.is_temp_path(live)
    assert fileio.remove_stale_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["keep", live.name])


def test_md5sums_round_trip_and_errors(tmp_path):
    path = tmp_path / "MD5SUMS"
    sums = {"a.tar": "0" * 32, "b.tgz": "f" * 32}
    path.write_text(fileio.format_md5sums(sums) + "# comment\n\n" + "ab" * 16 + " *sub/c.tar\n")
    assert fileio.read_md5sums(path) == {**sums, "c.tar": "ab" * 16}
    path.write_text("not-a-digest  a.tar\n")
    with pytest.raises(ValueError, match="line 1"):
        fileio.read_md5sums(path)


def test_exclusive_refuses_a_second_holder_naming_the_first_and_is_released_on_exit(tmp_path):
    lock = tmp_path / "locks" / "x.lock"
    with fileio.exclusive(lock, "the thing"):
        with pytest.raises(
            fileio.BusyError, match=rf"^the thing is in use by another run \(pid {os.getpid()} on "
        ):
            with fileio.exclusive(lock, "the thing"):
                pass
    with fileio.exclusive(lock, "the thing"):  # released
        pass


def test_exclusive_waits_for_a_holder_that_has_not_written_its_name_yet(tmp_path):
    import fcntl
    import json
    import threading

    lock = tmp_path / "x.lock"
    taken = threading.Event()

    def slow_holder() -> None:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        taken.set()
        time.sleep(0.2)  # the name arrives a moment after the lock
        os.pwrite(fd, json.dumps({"pid": 4242, "host": "elsewhere", "since": "then"}).encode(), 0)
        time.sleep(0.5)
        os.close(fd)

    holder = threading.Thread(target=slow_holder)
    holder.start()
    taken.wait(5)
    with pytest.raises(fileio.BusyError, match=r"\(pid 4242 on elsewhere, since then"):
        with fileio.exclusive(lock, "x"):
            pass
    holder.join()
