"""`ptwbench kvm setup`: the real KVM/arm64 stack from Debian packages, cached in one directory.

Steps (each prints what it does and how long it took; each is skipped when its output is
already in the cache):

1. host tools: qemu-system-arm (QEMU 7.2 on Debian 12), gcc-aarch64-linux-gnu,
   libc6-dev-arm64-cross, make, bc, flex, bison, xz-utils (apt-get install, as root);
2. arm64 and source packages through a private apt configuration in the cache (its own
   sources list, lists and state: /etc/apt and dpkg's architectures stay untouched):
   busybox-static:arm64, the stock kernel linux-image-<KVER>-arm64, linux-source-<SRC>;
3. extract them; install the kernel's UAPI headers (make headers, out of tree);
4. build the KVM selftests' page_fault_test and the replay program bench/kvm/ptw_replay.c
   against the selftests library (static, cross-compiled);
5. with --policy-kernel: the same kernel source, patched with bench/kvm/s1ptw_policy.patch
   (kvm.s1ptw_policy: 0 fix, 1 legacy, 2 ha-promote), configured from allnoconfig plus
   bench/kvm/policy-kernel.config, built as Image.gz.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PATCH = HERE / "s1ptw_policy.patch"
CONFIG = HERE / "policy-kernel.config"
REPLAY_C = HERE / "ptw_replay.c"
PFT_C = HERE / "pft_cases.c"                  # page_fault_test, one case per process
SRC_VERSION = "6.12"                          # linux-source-6.12 (bookworm-security)
STOCK_IMAGE = "linux-image-6.12.118+deb12-arm64"
BUSYBOX = "busybox-static"
HOST_PACKAGES = ("qemu-system-arm", "gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "make",
                 "bc", "flex", "bison", "xz-utils", "libssl-dev", "libelf-dev")
HOST_TOOLS = ("qemu-system-aarch64", "aarch64-linux-gnu-gcc", "make", "bc", "flex", "bison",
              "xz")
SOURCES = """\
deb [arch=arm64,amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
http://deb.debian.org/debian bookworm main
deb [arch=arm64,amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
http://deb.debian.org/debian-security bookworm-security main
"""
CROSS = ("ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-")


class SetupError(RuntimeError):
    """One line: what is missing or which build failed (exit status 2)."""


@dataclass(frozen=True)
class Stack:
    """Where everything lives inside the cache directory."""
    root: Path

    @property
    def apt(self) -> Path:
        return self.root / "apt"

    @property
    def debs(self) -> Path:
        return self.root / "debs"

    @property
    def extracted(self) -> Path:
        return self.root / "x"

    @property
    def src(self) -> Path:
        return self.root / "src" / f"linux-source-{SRC_VERSION}"

    @property
    def busybox(self) -> Path:
        return self.extracted / "bin" / "busybox"

    @property
    def stock_kernel(self) -> Path:
        return self.extracted / "boot" / f"vmlinuz-{STOCK_IMAGE.removeprefix('linux-image-')}"

    @property
    def policy_kernel(self) -> Path:
        return self.root / "build" / "policy" / "arch" / "arm64" / "boot" / "Image.gz"

    @property
    def headers(self) -> Path:
        return self.root / "build" / "hdr" / "usr" / "include"

    @property
    def selftests(self) -> Path:
        return self.root / "build" / "selftests"

    @property
    def replay(self) -> Path:
        return self.selftests / "aarch64" / "ptw_replay"

    @property
    def page_fault_test(self) -> Path:
        return self.selftests / "aarch64" / "page_fault_test"

    @property
    def pft_cases(self) -> Path:
        return self.selftests / "aarch64" / "pft_cases"

    def installed(self) -> str | None:
        """None if check can run (stock kernel), else what is missing."""
        for p in (self.busybox, self.stock_kernel, self.replay, self.pft_cases):
            if not p.exists():
                return f"{p} is missing: run `ptwbench kvm setup`"
        if not shutil.which("qemu-system-aarch64"):
            return "qemu-system-aarch64 is not installed: run `ptwbench kvm setup`"
        return None


def default_cache() -> Path:
    env = os.environ.get("PTWBENCH_KVM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ptwbench" / "kvm"


def _run(cmd, what: str, cwd: Path | None = None, env=None, log: Path | None = None) -> None:
    """Run a build/apt command; on failure one line (the log keeps the details)."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    except FileNotFoundError as e:
        raise SetupError(f"{what}: {e.filename} not found") from None
    finally:
        if log:
            out.close()
    if r.returncode != 0:
        where = f" (log: {log})" if log else ""
        raise SetupError(f"{what} failed with status {r.returncode}{where}")


class Steps:
    """Prints each step with its duration; the durations are kept for the manifest."""

    def __init__(self, echo=print):
        self.echo = echo
        self.times: dict[str, float] = {}

    def do(self, name: str, fn, *args) -> None:
        t0 = time.monotonic()
        self.echo(f"kvm setup: {name} ...", flush=True)
        note = fn(*args)
        dt = time.monotonic() - t0
        self.times[name] = round(dt, 1)
        self.echo(f"kvm setup: {name}: {note or 'done'} ({dt:.1f} s)", flush=True)


def _host_tools(stack: Stack) -> str:
    missing = [t for t in HOST_TOOLS if not shutil.which(t)]
    if not missing:
        return "present"
    if os.geteuid() != 0:
        raise SetupError(f"missing {', '.join(missing)}: install as root: apt-get install "
                         f"--no-install-recommends {' '.join(HOST_PACKAGES)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "install", "-y", "--no-install-recommends", *HOST_PACKAGES],
         "apt-get install", env=env, log=stack.root / "apt-install.log")
    return f"installed {' '.join(HOST_PACKAGES)}"


def _apt_env(stack: Stack) -> dict:
    a = stack.apt
    for d in ("lists/partial", "archives/partial", "etc"):
        (a / d).mkdir(parents=True, exist_ok=True)
    (a / "etc" / "sources.list").write_text(SOURCES)
    (a / "status").touch()
    conf = "\n".join((
        f'Dir::State "{a}";', f'Dir::State::Lists "{a}/lists";',
        f'Dir::State::status "{a}/status";', f'Dir::Cache "{a}";',
        f'Dir::Etc::SourceList "{a}/etc/sources.list";', f'Dir::Etc::SourceParts "{a}/etc";',
        f'Dir::Etc::Preferences "{a}/etc/none";', f'Dir::Etc::PreferencesParts "{a}/etc";',
        'APT::Architecture "arm64";', 'APT::Architectures { "arm64"; "amd64"; };',
        'Acquire::Languages "none";', 'APT::Sandbox::User "root";', ""))
    (a / "etc" / "apt.conf").write_text(conf)
    return dict(os.environ, APT_CONFIG=str(a / "etc" / "apt.conf"))


def _debs(stack: Stack) -> str:
    want = {BUSYBOX: f"{BUSYBOX}:arm64", STOCK_IMAGE: f"{STOCK_IMAGE}:arm64",
            f"linux-source-{SRC_VERSION}": f"linux-source-{SRC_VERSION}"}
    stack.debs.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_")[0] for p in stack.debs.glob("*.deb")}
    todo = [pkg for name, pkg in want.items() if name not in have]
    if not todo:
        return "cached"
    env = _apt_env(stack)
    _run(["apt-get", "update"], "apt-get update (private arm64 configuration)", env=env,
         log=stack.root / "apt-update.log")
    _run(["apt-get", "download", *todo], f"apt-get download {' '.join(todo)}",
         cwd=stack.debs, env=env, log=stack.root / "apt-download.log")
    return "downloaded " + " ".join(todo)


def _extract(stack: Stack) -> str:
    stamp = stack.extracted / ".done"
    if not stamp.exists():
        for deb in sorted(stack.debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(stack.extracted)], f"dpkg-deb -x {deb.name}")
        stamp.touch()
    if (stack.src / "Makefile").exists():
        return "cached"
    tarball = stack.extracted / "usr" / "src" / f"linux-source-{SRC_VERSION}.tar.xz"
    stack.src.parent.mkdir(parents=True, exist_ok=True)
    _run(["tar", "xJf", str(tarball)], "extract linux-source", cwd=stack.src.parent)
    return f"extracted {tarball.name}"


def _headers(stack: Stack) -> str:
    if (stack.headers / "linux" / "kvm.h").exists():
        return "cached"
    out = stack.root / "build" / "hdr"
    _run(["nice", "-n", "10", "make", f"O={out}", *CROSS, "headers"], "make headers",
         cwd=stack.src, log=stack.root / "headers.log")
    return "installed"


def _selftests(stack: Stack) -> str:
    kvm = stack.src / "tools" / "testing" / "selftests" / "kvm"
    for src in (REPLAY_C, PFT_C):
        dst = kvm / "aarch64" / src.name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)             # make rebuilds what changed
    h = str(stack.headers)
    cmd = ["nice", "-n", "10", "make", "-C", str(kvm), *CROSS, "LDFLAGS=-static",
           f"OUTPUT={stack.selftests}", f"LINUX_HDR_PATH={h}/", f"KHDR_INCLUDES=-isystem {h}",
           "TEST_GEN_PROGS_EXTENDED_aarch64=aarch64/ptw_replay aarch64/pft_cases",
           f"-j{os.cpu_count() or 2}", str(stack.replay), str(stack.pft_cases),
           str(stack.page_fault_test)]
    _run(cmd, "build of the KVM selftests (page_fault_test, pft_cases, ptw_replay)",
         log=stack.root / "selftests.log")
    return f"{stack.replay.name}, {stack.pft_cases.name}, {stack.page_fault_test.name}"


def _patch(stack: Stack) -> str:
    check = subprocess.run(["patch", "-p1", "-R", "--dry-run", "-s", "-i", str(PATCH)],
                           cwd=stack.src, capture_output=True)
    if check.returncode == 0:
        return "already applied"
    _run(["patch", "-p1", "-s", "-i", str(PATCH)], "patch s1ptw_policy", cwd=stack.src)
    return "applied"


def _policy_kernel(stack: Stack) -> str:
    out = stack.policy_kernel.parents[3]
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / ".config-fragment"
    stale = not (out / ".config").exists() or not cfg.exists() or \
        cfg.read_bytes() != CONFIG.read_bytes()
    if stale:
        _run(["make", f"O={out}", *CROSS, f"KCONFIG_ALLCONFIG={CONFIG}", "allnoconfig"],
             "kernel configuration (allnoconfig + policy-kernel.config)", cwd=stack.src,
             log=out / "config.log")
        shutil.copyfile(CONFIG, cfg)
    _run(["nice", "-n", "10", "make", f"O={out}", *CROSS, f"-j{os.cpu_count() or 2}",
          "Image.gz"], "policy kernel build", cwd=stack.src, log=out / "build.log")
    return str(stack.policy_kernel)


def setup(stack: Stack, policy_kernel: bool, echo=print) -> dict[str, float]:
    stack.root.mkdir(parents=True, exist_ok=True)
    echo(f"kvm setup: cache directory {stack.root}")
    s = Steps(echo)
    s.do("host tools (apt)", _host_tools, stack)
    s.do("arm64 packages (private apt configuration)", _debs, stack)
    s.do("extract packages", _extract, stack)
    s.do("kernel UAPI headers", _headers, stack)
    s.do("selftests + replay program", _selftests, stack)
    if policy_kernel:
        s.do("s1ptw_policy patch", _patch, stack)
        s.do("policy kernel (allnoconfig + KVM)", _policy_kernel, stack)
    return s.times
