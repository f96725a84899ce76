"""Signals held back while a run's state changes (nst_fast.runtime.interrupts)."""
import signal
import threading

import pytest

from nst_fast.runtime import interrupts


@pytest.fixture
def handlers():
    """SIGINT and SIGTERM handled by Python code that lists the signals it gets."""
    seen = []
    previous = {s: signal.signal(s, lambda signum, frame: seen.append(signum)) for s in interrupts.SIGNALS}
    yield seen
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_ctrl_c_while_held_is_raised_at_the_end_of_the_block():
    done = []
    held = interrupts.Deferral()
    for block in range(2):  # one Deferral, block after block
        with pytest.raises(KeyboardInterrupt):
            with held:
                held.hold()
                signal.raise_signal(signal.SIGINT)
                done.append(block)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert done == [0, 1]


def test_before_hold_ctrl_c_is_raised_at_once():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.Deferral():
            signal.raise_signal(signal.SIGINT)
            done.append("after")
    assert done == []


def test_the_handlers_are_put_back_and_get_the_first_signal_held(handlers):
    before = [signal.getsignal(s) for s in interrupts.SIGNALS]
    with interrupts.Deferral() as held:
        held.hold()
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        assert handlers == []
    assert handlers == [signal.SIGTERM]
    assert [signal.getsignal(s) for s in interrupts.SIGNALS] == before


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.Deferral() as held:
            held.hold()
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_nothing_is_held():
    outcome = []

    def run():
        try:
            with interrupts.Deferral() as held:
                held.hold()
                outcome.append(signal.getsignal(signal.SIGINT))
        except BaseException as exc:  # signal.signal raises ValueError outside the main thread
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert outcome == [signal.default_int_handler]


def test_signals_while_ignored_are_dropped(handlers):
    before = [signal.getsignal(s) for s in interrupts.SIGNALS]
    with interrupts.ignored():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
    assert handlers == []
    assert [signal.getsignal(s) for s in interrupts.SIGNALS] == before
    signal.raise_signal(signal.SIGINT)  # handled again after the block
    assert handlers == [signal.SIGINT]
