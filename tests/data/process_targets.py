"""Targets for tests/test_process.py: code that uses threads, hangs, crashes or outlives its audit."""
import ctypes
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from planted import WrongTanh, under_analyzer

POOL = ThreadPoolExecutor(max_workers=2)  # alive for the whole process, as a user's module-level pool is


def _x(*shape):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def threadpool_forward():
    """A correct function whose forward runs its halves on a module-level thread pool."""
    def fn(x):
        halves = [POOL.submit(torch.tanh, part) for part in x.chunk(2)]
        return torch.cat([h.result() for h in halves])
    return fn, (_x(4, 3),)


def _under_dispatch_mode(action):
    """x, after ``action()`` where an analyzer's dispatch mode traces the forward (localization, the hazard
    scan): the optional phases, not the checks."""
    def hook(x):
        if under_analyzer():
            action()
        return x
    return hook


def faulty_hangs_when_traced():
    """A wrong backward whose forward hangs when traced: the checks finish, localization never does."""
    hang = _under_dispatch_mode(lambda: time.sleep(3600))
    return (lambda x: WrongTanh.apply(hang(x))), (_x(3, 2),)


def faulty_crashes_when_traced():
    """A wrong backward whose forward segfaults when traced."""
    crash = _under_dispatch_mode(lambda: ctypes.string_at(0))
    return (lambda x: WrongTanh.apply(crash(x))), (_x(3, 2),)


def segfaults():
    """A forward that reads address 0."""
    def fn(x):
        ctypes.string_at(0)
        return x
    return fn, (_x(3),)


def sleeps_with_a_child():
    """A forward that starts a child process of its own, writes both pids to $PROCESS_TEST_PIDS, and sleeps."""
    def fn(x):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(os.environ["PROCESS_TEST_PIDS"], "w") as pids:
            pids.write(f"{os.getpid()} {child.pid}\n")
        time.sleep(600)
        return x
    return fn, (_x(3),)
