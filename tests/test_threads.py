"""The process's CPU resources: freed memory kept for the next call (glibc)."""
import subprocess
import sys

import pytest

# Each call allocates and frees 10 blocks of 40 MB (far above glibc's mmap threshold), then
# prints the minor page faults per call after a warm-up call; the setting is process-wide, so
# each mode runs in its own process.
SCRIPT = """
import resource, sys, torch
import openmm_geom
if sys.argv[1] == "retain":
    assert openmm_geom.retain_freed_memory()
def call():
    blocks = [torch.ones(10_000_000) for _ in range(10)]
    return sum(float(b[-1]) for b in blocks)
call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    call()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


def faults_per_call(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_retained_memory_is_reused_instead_of_faulted_in_again():
    pages = 10 * 40e6 / 4096  # what one call touches
    default, retained = faults_per_call("default"), faults_per_call("retain")
    assert default > 0.8 * pages  # glibc maps and unmaps every block: each call faults again
    # kept: the next call reuses the pages. Not all of them: 15% of the pages faulted again
    # on the idle machine and 27% in a fresh clone run beside a training (the VM's kernel
    # reclaims idle pages, kdamond); the bound was 0.2 until that run, raised for it.
    assert retained < 0.4 * pages


RELEASE_SCRIPT = """
import sys, torch
import openmm_geom
assert openmm_geom.retain_freed_memory()
from openmm_geom.threads import release_freed_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
blocks = [torch.ones(10_000_000) for _ in range(10)]  # 400 MB
del blocks
kept = rss()
released = release_freed_memory()
print(kept, rss(), released)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_released_memory_goes_back_to_the_kernel():
    done = subprocess.run([sys.executable, "-c", RELEASE_SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    kept, after, released = done.stdout.split()[-3:]
    assert released == "True"
    assert int(kept) - int(after) > 300e6  # most of the 400 MB kept by retain_freed_memory


PEAK_SCRIPT = """
import torch
from openmm_geom.threads import memory_status_bytes
before = memory_status_bytes("VmHWM")
block = torch.ones(50_000_000)  # 200 MB, touched
del block
print(before, memory_status_bytes("VmHWM"), memory_status_bytes("VmRSS"))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status")
def test_memory_status_reports_the_peak_and_the_current_resident_memory():
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    before, peak, current = (int(v) for v in done.stdout.split()[-3:])
    assert peak - before > 180e6  # the 200 MB block raised the high-water mark
    assert current < peak - 150e6  # and was given back (above glibc's mmap threshold)
