"""Boot an arm64 kernel under QEMU (TCG, EL2 emulated) with an initramfs that runs a job.

The initramfs is written here as a gzip'ed newc cpio (the format of the kernel's
Documentation/driver-api/early-userspace/buffer-format.rst), so no cpio tool is needed:
busybox (Debian's busybox-static:arm64), /init (bench/kvm/init.sh), the replay program,
page_fault_test, and the job's own files under /job.
"""
from __future__ import annotations

import gzip
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

INIT = Path(__file__).with_name("init.sh")
DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "job",
        "mnt")
# QEMU 7.2 `virt` with EL2 (virtualization=on) and GICv3; -cpu max has FEAT_VHE and
# FEAT_HAFDBS (not FEAT_HAFT); -nic none: no NIC ROM needed (docs/real-kvm.md).
QEMU_ARGS = ("-M", "virt,virtualization=on,gic-version=3", "-cpu", "max", "-m", "1G",
             "-nographic", "-no-reboot", "-nic", "none")
APPEND = "console=ttyAMA0 rdinit=/init panic=-1 quiet loglevel=1"


def _cpio_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    nb = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    pad = lambda n: b"\0" * (-n % 4)                       # noqa: E731
    return head + nb + pad(len(head) + len(nb)) + data + pad(len(data))


def cpio(files: dict[str, bytes | None], executable: set[str] = frozenset()) -> bytes:
    """A newc archive: name -> content (None: a directory), deterministic (mtime 0)."""
    out = []
    for ino, name in enumerate(sorted(files), start=1):
        data = files[name]
        if data is None:
            out.append(_cpio_entry(name, 0o40755, b"", ino))
        else:
            mode = 0o100755 if name in executable else 0o100644
            out.append(_cpio_entry(name, mode, data, ino))
    out.append(_cpio_entry("TRAILER!!!", 0, b"", 0))
    return b"".join(out)


def initramfs(busybox: Path, programs: dict[str, Path], job: dict[str, str]) -> bytes:
    """The gzip'ed initramfs: busybox, /init, programs (name -> file) in /bin, job files."""
    files: dict[str, bytes | None] = {d: None for d in DIRS}
    files["bin/busybox"] = busybox.read_bytes()
    files["init"] = INIT.read_bytes()
    for name, path in programs.items():
        files[f"bin/{name}"] = path.read_bytes()
    for name, text in job.items():
        files[f"job/{name}"] = text.encode()
    exe = {"bin/busybox", "init", "job/run.sh"} | {f"bin/{n}" for n in programs}
    return gzip.compress(cpio(files, exe), compresslevel=6, mtime=0)


@dataclass
class BootResult:
    output: str
    seconds: float
    timed_out: bool
    returncode: int


def boot(kernel: Path, initrd: Path, timeout_s: float, console: Path, smp: int = 1,
         qemu: str = "qemu-system-aarch64", nice: int = 10) -> BootResult:
    """Run QEMU to completion (the job powers the guest off) or until timeout_s; the
    console streams into `console` as it runs (watch it with tail -f)."""
    cmd = ["nice", "-n", str(nice), qemu, *QEMU_ARGS, "-smp", str(smp),
           "-kernel", str(kernel), "-initrd", str(initrd), "-append", APPEND]
    t0 = time.monotonic()
    with open(console, "wb") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            p.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
            timed_out = True
    text = console.read_bytes().decode("utf-8", "replace").replace("\r", "")
    return BootResult(text, time.monotonic() - t0, timed_out, p.returncode)
