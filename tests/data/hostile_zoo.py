"""A zoo for suite tests of exits and interrupts: a quick correct case, one that sleeps (and says its worker's pid
in ``GRADAUDIT_TEST_MARKER``), and cases whose code exits or raises KeyboardInterrupt."""
import os
import sys
import time

from gradaudit.suite.zoos import ZooCase

import hostile_targets as targets  # noqa: E402  (tests/data is on the worker's path: the zoo file's folder)


def sleeper():
    marker = os.environ.get("GRADAUDIT_TEST_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
    time.sleep(600)


def exits_in_factory():
    sys.exit(0)


def zoo():
    return [ZooCase("quick", targets.good, orders=(1,)), ZooCase("sleeper", sleeper, orders=(1,)),
            ZooCase("exits", targets.exit0_fourth_call, orders=(1,)),
            ZooCase("os_exits", targets.os_exit0, orders=(1,)),
            ZooCase("exits_in_factory", exits_in_factory, orders=(1,)),
            ZooCase("interrupts", targets.keyboard_interrupt, orders=(1,))]
