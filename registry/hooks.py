"""Opt-in pause points for crash tests (off unless an environment variable is set).

``PREIMAGE_TEST_PAUSE_<POINT>=SECONDS`` makes the registry print
``preimage-test-pause: <point>`` on stderr and sleep that long at the point, so
a test can SIGKILL the process exactly there. Points:

* ``DELETE``: after the index transaction that deleted the rows committed,
  before the unreferenced blob files are removed.
* ``STAGE``: a registration's bytes are validated and staged (with a shared object
  store: uploaded to a temporary object); the write lock is not yet taken.
* ``COMMIT``: a registration's blob has been renamed into ``blobs/``; its index
  row is not yet inserted (the write lock is held).

Works the same in a server process (``preimage serve``), whose registry is this one.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["ENV_PREFIX", "MARKER", "pause"]

ENV_PREFIX = "PREIMAGE_TEST_PAUSE_"
"""Environment variable prefix; the point name follows in capitals."""
MARKER = "preimage-test-pause:"
"""What is printed on stderr, followed by the point name, when a pause begins."""


def pause(point: str) -> None:
    """Sleep at ``point`` when ``PREIMAGE_TEST_PAUSE_<POINT>`` is set to a number of seconds."""
    value = os.environ.get(ENV_PREFIX + point.upper())
    if not value:
        return
    print(f"{MARKER} {point.lower()}", file=sys.stderr, flush=True)
    time.sleep(float(value))
