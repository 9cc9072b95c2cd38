"""The container's SIGTERM handler: it interrupts the job until the container starts to
destroy itself, and nothing after, whichever thread sends the destroy request."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from trainer.container import entrypoint


@pytest.fixture
def handlers() -> Iterator[entrypoint._Stop]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    stop = entrypoint._Stop()
    entrypoint._install_signal_handlers(stop)
    try:
        yield stop
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # the handler runs in the main thread at its next bytecode


def test_a_sigterm_interrupts_the_job_and_names_the_signal(handlers: entrypoint._Stop) -> None:
    with pytest.raises(KeyboardInterrupt):
        _sigterm()
    assert handlers.why is not None and handlers.why.cause == "signal"
    assert handlers.why.reason == "signal SIGTERM"


def test_once_disarmed_from_another_thread_a_sigterm_interrupts_nothing(
    handlers: entrypoint._Stop,
) -> None:
    """The hard stop destroys the instance from the ticker thread, which cannot change the
    handler: the flag it raises is enough."""
    ticker = threading.Thread(target=entrypoint._disarm_signal_handlers, args=(handlers,))
    ticker.start()
    ticker.join()
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
    _sigterm()  # no KeyboardInterrupt
    assert handlers.destroying and handlers.why is None


def test_disarmed_in_the_main_thread_the_signal_is_ignored(handlers: entrypoint._Stop) -> None:
    entrypoint._disarm_signal_handlers(handlers)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    _sigterm()
    assert handlers.why is None
