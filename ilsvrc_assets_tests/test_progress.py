from ilsvrc_assets.progress import Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reports_rate_and_time_left_at_most_every_interval_and_at_the_end():
    clock, lines = Clock(), []
    progress = Progress("validation tree", 50_000, "images", lines.append, interval=5, clock=clock)
    clock.now += 1
    progress.update(3_000)  # too soon
    assert lines == []
    clock.now += 4
    progress.update(12_000)
    assert lines == ["validation tree: 12,000 of 50,000 images (24%), 2,400 images/s, about 16 s left"]
    clock.now += 1
    progress.update(13_000)
    assert len(lines) == 1
    clock.now += 14
    progress.update(50_000)  # the end is always reported
    assert lines[-1] == "validation tree: 50,000 of 50,000 images (100%), 2,500 images/s, done in 20 s"
    progress.update(50_000)  # told again: reported once
    assert len(lines) == 2


def test_byte_counts_are_scaled():
    clock, lines = Clock(), []
    progress = Progress("download", 3_000_000_000, "MB", lines.append, interval=0, scale=1e6, clock=clock)
    clock.now += 10
    progress.update(500_000_000)
    assert lines == ["download: 500.0 of 3,000.0 MB (16%), 50.0 MB/s, about 50 s left"]


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 75, 3599, 7300)] == [
        "0 s",
        "59 s",
        "1 min 15 s",
        "59 min 59 s",
        "2 h 01 min",
    ]


def test_unknown_total_and_a_resumed_start():
    clock, lines = Clock(), []
    progress = Progress(
        "download", None, "MB", lines.append, interval=0, scale=1e6, clock=clock, start=100_000_000
    )
    clock.now += 4
    progress.update(300_000_000)  # 200 MB in 4 s: the 100 MB from before do not count
    assert lines == ["download: 300.0 MB, 50.0 MB/s"]
    assert not progress.finished
