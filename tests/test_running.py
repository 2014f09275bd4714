"""How service processes run: the heap tuning the proxy and the capture worker apply at start."""

from __future__ import annotations

import subprocess
import sys

# Run apart, so the test process keeps glibc's defaults. mallinfo2's hblks: blocks glibc holds mmapped.
MMAPPED_BLOCKS = """
import ctypes, sys
from common.running import keep_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "kept":
    assert keep_heap()
before = libc.mallinfo2().hblks
body = bytes(600 * 1024)  # a large request body's size
print(libc.mallinfo2().hblks - before)
"""


def mmapped_blocks_for_a_large_body(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", MMAPPED_BLOCKS, mode], capture_output=True, text=True, check=True)
    return int(run.stdout)


def test_a_large_body_comes_from_the_heap_once_kept_not_from_a_mapping_of_its_own() -> None:
    assert mmapped_blocks_for_a_large_body("default") == 1
    assert mmapped_blocks_for_a_large_body("kept") == 0
