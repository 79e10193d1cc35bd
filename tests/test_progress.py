"""Progress bars in a batch job's log: a line at the start, at most one every LOG_INTERVAL seconds, one at the end,
and no carriage-return frames; on a terminal, tqdm's own redrawn bar."""
import io
import time

import pytest

from tscl import progress


class Log(io.StringIO):
    def isatty(self):
        return False


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("steps", [1, 7, 20_000])
def test_a_log_gets_few_whole_lines(monkeypatch, steps):
    log = Log()
    t0 = time.monotonic()
    bar = progress.progress_bar(total=steps, desc="pretrain pclr/resnet1d", file=log, mininterval=0.2)
    for i in range(steps):
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}", refresh=False)
        bar.update()
        if steps > 1000 and i % 1000 == 0:
            time.sleep(0.01)
    bar.close()
    elapsed = time.monotonic() - t0
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert lines[0].startswith("pretrain pclr/resnet1d:") and f"{steps}/{steps}" in lines[-1]
    assert 2 <= len(lines) <= 3 + elapsed / 0.2, (len(lines), elapsed)  # start, at most one per interval, end


def test_the_default_interval_for_logs_is_a_few_seconds():
    assert 1 <= progress.LOG_INTERVAL <= 30
    bar = progress.progress_bar(total=3, file=Log())
    assert bar.mininterval == progress.LOG_INTERVAL
    bar.close()


def test_a_terminal_gets_the_redrawn_bar():
    term = Terminal()
    bar = progress.progress_bar(range(50), file=term, mininterval=0)
    for _ in bar:
        pass
    assert term.getvalue().count("\r") >= 10  # redrawn in place, as tqdm does


def test_disabled_bars_write_nothing():
    log = Log()
    for _ in progress.progress_bar(range(10), file=log, disable=True):
        pass
    assert log.getvalue() == ""


def test_the_closing_frame_is_not_repeated():
    log = Log()
    bar = progress.progress_bar(range(3), desc="embedding", file=log)
    for _ in bar:
        pass
    lines = log.getvalue().splitlines()
    assert len(lines) == len(set(lines)) and lines[-1].startswith("embedding: 100%")
