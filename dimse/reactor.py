"""Event-driven reactors for the associations the DIMSE listener accepts.

pynetdicom 3 runs each association in two threads that poll: the DUL reactor sleeps 1 ms
whenever it finds nothing to do, and the acceptor reactor sleeps 1 ms on every turn. With a few
associations open that is thousands of wake-ups a second, each taking the GIL from the threads
doing the work (the event loop, the index writer), so parallel C-STORE associations slowed each
other down instead of adding up (four associations stored no faster than one). Each pynetdicom
source comment says the same ("TODO: try and make this event based").

Here the two loops are pynetdicom's own, turn for turn, with the sleeps replaced by waits that end
as soon as there is work: the DUL reactor polls its socket and a wake-up pipe written
whenever a primitive or an event is queued for it; the acceptor reactor waits on an event set
whenever a DIMSE message or an upper-layer primitive is queued for it. Both still wake every
``IDLE_WAIT`` seconds to check pynetdicom's timers (ARTIM, network idle), which count seconds.

:func:`install` is applied by the listener's request handler to each association it creates,
before its threads start. Associations this process requests itself (C-MOVE sub-operations) keep
pynetdicom's loops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("dimse")

# Longest wait without work: bounds how late a timer expiry or a stop request is noticed.
IDLE_WAIT = 0.05


class _NotifyingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``notify`` after every put (from whichever thread puts)."""

    def __init__(self, notify: Callable[[], None]) -> None:
        super().__init__()
        self._notify = notify

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


def _notifying(old: queue.Queue, notify: Callable[[], None]) -> _NotifyingQueue:  # type: ignore[type-arg]
    """A notifying queue holding what ``old`` holds (e.g. the socket's Evt5, queued when the
    accepted connection was wrapped)."""
    new = _NotifyingQueue(notify)
    while True:
        try:
            new.put(old.get_nowait())
        except queue.Empty:
            return new


class _Pipe:
    """A self-pipe: ``notify`` from any thread wakes a poll on :attr:`fd`. Once closed, a
    notify does nothing: its descriptor numbers may already belong to another file."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)
        self._lock = threading.Lock()
        self._closed = False

    def notify(self) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(BlockingIOError, OSError):  # full: a wake-up is pending
                os.write(self._w, b"\0")

    def drain(self) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self.fd, 4096):
                    pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self.fd, self._w):
                with contextlib.suppress(OSError):
                    os.close(fd)


def install(assoc: Any) -> None:
    """Give an accepted association (not yet started) event-driven reactors."""
    dul, dimse = assoc.dul, assoc.dimse
    pipe = _Pipe()
    ready = threading.Event()
    dul.event_queue = _notifying(dul.event_queue, pipe.notify)  # holds Evt5 already
    dul.to_provider_queue = _notifying(dul.to_provider_queue, pipe.notify)
    dul.to_user_queue = _notifying(dul.to_user_queue, ready.set)
    dimse.msg_queue = _notifying(dimse.msg_queue, ready.set)
    stop_dul = dul.stop_dul
    kill_dul = dul.kill_dul

    def stop_and_wake() -> bool:
        # pynetdicom's stop_dul sets the flag (in Sta1 only) and then waits for the thread: the
        # thread, waiting in poll(), is woken first.
        if dul.state_machine.current_state == "Sta1":
            dul._kill_thread = True
            pipe.notify()
        return bool(stop_dul())

    def kill_and_wake() -> None:
        kill_dul()
        pipe.notify()

    # pynetdicom's Association.kill() calls these from the association thread: the DUL reactor,
    # waiting in select(), must see the request at once, not at its next timeout.
    dul.stop_dul = stop_and_wake
    dul.kill_dul = kill_and_wake
    dul._target = lambda: _run_dul(dul, pipe)
    assoc._run_reactor = lambda: _run_acceptor(assoc, ready)


def _wait_for_transport(dul: Any, pipe: _Pipe) -> None:
    """Wait until the socket has data, something is queued for the DUL, or ``IDLE_WAIT``.
    poll(), not select(): no limit on descriptor numbers (select fails from 1024)."""
    sock = getattr(dul.socket, "socket", None)
    pending = getattr(sock, "pending", None)  # an SSLSocket may hold bytes poll() cannot see
    if pending is not None and pending():
        return
    try:
        poller = select.poll()
        poller.register(pipe.fd, select.POLLIN)
        if sock is not None:
            poller.register(sock, select.POLLIN)
        poller.poll(IDLE_WAIT * 1000)
    except (OSError, ValueError):
        # The socket closed under us (the reactor sees it next turn); never spin meanwhile.
        time.sleep(IDLE_WAIT)
    pipe.drain()


def _run_dul(dul: Any, pipe: _Pipe) -> None:
    """``DULServiceProvider.run_reactor`` (pynetdicom 3.0) with the idle sleep replaced."""
    try:
        _dul_loop(dul, pipe)
    finally:
        pipe.close()


def _dul_loop(dul: Any, pipe: _Pipe) -> None:
    from pynetdicom.pdu import A_ABORT_RQ

    dul._idle_timer.start()
    idle = False
    while True:
        if not dul.assoc._dul_ready.is_set():
            dul.assoc._dul_ready.set()
            idle = True
        if idle and dul.event_queue.empty() and dul.to_provider_queue.empty():
            _wait_for_transport(dul, pipe)
        if dul._kill_thread:
            break
        if dul.artim_timer.expired:
            dul.event_queue.put("Evt18")
        try:
            if dul._process_recv_primitive():  # encode (sent by the state machine)
                pass
            elif dul._is_transport_event():  # receive and decode a PDU
                dul._idle_timer.restart()
        except Exception:
            # As pynetdicom: bypass the state machine and send an A-ABORT.
            import logging

            logging.getLogger("pynetdicom").exception("Exception in DUL.run(), aborting association")
            abort = A_ABORT_RQ()
            abort.source = 0x02
            abort.reason_diagnostic = 0x00
            with contextlib.suppress(Exception):
                dul.socket.send(abort.encode())
            dul.assoc.is_aborted = True
            dul.assoc.is_established = False
            dul.assoc._kill = True
            dul._kill_thread = True
            return
        try:
            event = dul.event_queue.get(block=False)
        except queue.Empty:
            idle = True
            continue
        dul.state_machine.do_action(event)
        idle = False


def _run_acceptor(assoc: Any, ready: threading.Event) -> None:
    """``Association._run_reactor`` (pynetdicom 3.0, acceptor) with the 1 ms sleep replaced."""
    from pynetdicom import evt

    assoc._is_paused = False
    while not assoc._kill:
        if assoc.dimse.msg_queue.empty() and assoc.dul.to_user_queue.empty():
            ready.wait(IDLE_WAIT)
        ready.clear()

        # pynetdicom's pause point: send_*() from a handler stops the reactor here.
        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False

        context_id, msg = assoc.dimse.get_msg(block=False)
        if msg:
            assoc._serve_request(msg, context_id)

        if assoc.is_established and assoc.acse.is_release_requested():
            assoc.acse.send_release(is_response=True)
            assoc.is_released = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_RELEASED, {})
            assoc.kill()
            return

        if assoc.acse.is_aborted():
            assoc.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV fires for subscribers
            assoc.is_aborted = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_ABORTED, {})
            assoc.kill()
            return

        if not assoc.dul.is_alive():
            assoc.kill()
            return

        if assoc.dul.idle_timer_expired():
            log.warning("DIMSE association idle for longer than the network timeout: %s",
                        "released" if assoc.network_timeout_response == "A-RELEASE" else "aborted")
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc.release()
                assoc._is_paused = False
            else:
                assoc.abort()
            assoc.kill()
            return
