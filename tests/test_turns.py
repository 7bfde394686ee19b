"""Turns between threads: inference runs at once, a capture runs alone (grata_monai.turns)."""

from __future__ import annotations

import threading
import time

from grata_monai.turns import Turns

WAIT = 5.0  # seconds a thread may take to get its turn when it should


def _start(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _hold(turns: Turns, entered: threading.Event, leave: threading.Event):
    def run() -> None:
        with turns.running():
            entered.set()
            leave.wait(WAIT)

    return run


def test_threads_run_at_once():
    turns = Turns()
    entered = [threading.Event(), threading.Event()]
    leave = threading.Event()
    threads = [_start(_hold(turns, e, leave)) for e in entered]
    assert all(e.wait(WAIT) for e in entered)
    assert turns.running_threads == 2
    leave.set()
    for t in threads:
        t.join(WAIT)
    assert turns.running_threads == 0


def test_a_capture_waits_for_running_threads_and_keeps_new_ones_out():
    turns = Turns()
    entered, leave = threading.Event(), threading.Event()
    runner = _start(_hold(turns, entered, leave))
    assert entered.wait(WAIT)
    captured, late = threading.Event(), threading.Event()
    finish_capture = threading.Event()

    def capture() -> None:
        with turns.alone():
            captured.set()
            finish_capture.wait(WAIT)

    capturer = _start(capture)
    time.sleep(0.2)
    assert not captured.is_set()  # a thread is still running
    newcomer = _start(_hold(turns, late, threading.Event()))
    leave.set()
    runner.join(WAIT)
    assert captured.wait(WAIT)
    time.sleep(0.2)
    assert not late.is_set()  # the capture went first and is under way
    finish_capture.set()
    capturer.join(WAIT)
    assert late.wait(WAIT)
    newcomer.join(WAIT)


def test_running_threads_that_capture_take_turns_without_deadlock():
    turns = Turns()
    inside, most, captures = [], [], []  # threads capturing now, the most at once, captures done
    both_running = threading.Barrier(2, timeout=WAIT)

    def infer() -> None:
        with turns.running():
            both_running.wait()  # each holds a running turn when it comes to its capture
            with turns.alone():
                inside.append(threading.get_ident())
                most.append(len(inside))
                time.sleep(0.05)
                inside.remove(threading.get_ident())
            with turns.running():  # nested: the thread's turn is kept
                captures.append(1)

    threads = [_start(infer) for _ in range(2)]
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert max(most) == 1 and len(captures) == 2  # one capture at a time, both finished
    assert turns.running_threads == 0


def test_a_nested_running_turn_does_not_wait_for_a_waiting_capture():
    turns = Turns()
    entered, nested, captured = threading.Event(), threading.Event(), threading.Event()
    go_on = threading.Event()

    def infer() -> None:
        with turns.running():
            entered.set()
            go_on.wait(WAIT)
            with turns.running():
                nested.set()

    def capture() -> None:
        with turns.alone():
            captured.set()

    runner = _start(infer)
    assert entered.wait(WAIT)
    capturer = _start(capture)
    time.sleep(0.1)
    go_on.set()
    assert nested.wait(WAIT)
    runner.join(WAIT)
    assert captured.wait(WAIT)
    capturer.join(WAIT)
