"""Run a command inside a small QEMU guest with a stock Debian kernel (DESIGN.md section 6).

This machine's kernel has no ``ipip`` module, and its ``/dev/kvm`` cannot run a stock kernel, so the
calico-ipip tests boot a Debian kernel under QEMU's software emulation (TCG) with virtme-ng (``vng``).
The guest sees the host filesystem read-only (with tmpfs overlays on /etc, /tmp, /var, ...; /run is a
tmpfs), so the repo's ``.venv`` and tests run inside unchanged.

- ``ensure_kernel(cache_dir)``: the current ``linux-image-6.1.0-<N>-amd64`` package, downloaded with
  ``apt-get download`` and unpacked with ``dpkg -x`` into ``<cache_dir>/kernel`` (``depmod`` run there);
  nothing is installed and /boot is not touched. Idempotent; the cache is ``<repo>/.cache/vm``.
- ``vm_unavailable_reason()``: why no guest can be had here (None when one can).
- ``run_in_vm(command, timeout)``: boot one guest, run ``command`` in it, return ``(rc, log)``. vng's own
  exit code and output are not reliable, so the guest writes both into a ``--rwdir`` folder.
- ``vng_argv``, ``vng_host_env``, ``kill_group``: run_in_vm's parts, also used by ``vmctl.py``, which keeps
  one guest up across several commands (molecule scenario ipip-vm); ``GUEST_ENV``: the environment both
  test_ipip_vm.py and vmctl give commands in the guest.

Typical use (tests/integration/test_ipip_vm.py)::

    reason = vm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    rc, log = run_in_vm(["bash", "-c", "modprobe ipip && python -m pytest ..."], timeout=1800)
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "vm"
KERNEL_META_PACKAGE = "linux-image-amd64"
# The stock bookworm kernel flavour: "linux-image-6.1.0-56-amd64" -> kernel release "6.1.0-56-amd64".
KERNEL_PACKAGE = re.compile(r"^linux-image-(?P<kver>6\.1\.0-(?P<abi>\d+)-amd64)$")
COMPLETE_MARK = ".podnet-complete"  # written last: a half-unpacked kernel is never used
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_MEMORY = "1G"
GUEST_CPUS = 2
APT_TIMEOUT = 600
# A second, read-only export of the host's / that the guest mounts with caching (cached_root_prelude).
CACHED_ROOT_TAG = "podnethost"
CACHED_ROOT_OPTIONS = "trans=virtio,version=9p2000.L,msize=524288,cache=loose,ro"
GUEST_CACHED_ROOT = "/run/podnet-hostfs"
# The guest sees the host filesystem read-only (root's home too): ansible's temporary files and
# anything else that wants a writable $HOME go to the guest's tmpfs. Shared by every guest user
# (test_ipip_vm.py, vmctl.py), so the playbooks run there see one and the same environment.
GUEST_HOME = "/run/podnet-vm-home"
GUEST_ENV = {
    "HOME": GUEST_HOME,
    "ANSIBLE_LOCAL_TMP": f"{GUEST_HOME}/.ansible/tmp",
    "ANSIBLE_REMOTE_TMP": f"{GUEST_HOME}/.ansible/tmp",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}


class VMUnavailable(RuntimeError):
    """No guest can be booted here (missing tool, kernel not obtainable); the text says why."""


def _run(argv: Sequence[str], timeout: float = APT_TIMEOUT, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL, **kw)


def tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --- the kernel ------------------------------------------------------------------------------------


def _package_from_apt() -> str | None:
    """Name of the current 6.1.0-<N>-amd64 kernel package, from apt's lists (None if apt does not know)."""
    names: set[str] = set()
    depends = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], timeout=120)
    if depends.returncode == 0:
        for line in depends.stdout.splitlines():
            key, _, value = line.strip().partition(":")
            if key == "Depends" and KERNEL_PACKAGE.match(value.strip()):
                names.add(value.strip())
    if not names:  # a meta package pointing elsewhere (backports): take the newest 6.1.0 ABI apt knows
        search = _run(["apt-cache", "search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64$"],
                      timeout=120)
        names = {line.split(" - ")[0].strip() for line in search.stdout.splitlines()}
        names = {n for n in names if KERNEL_PACKAGE.match(n)}
    if not names:
        return None
    return max(names, key=lambda n: int(KERNEL_PACKAGE.match(n)["abi"]))


def kernel_package_name(update: bool = True) -> str:
    """The current ``linux-image-6.1.0-<N>-amd64``; runs ``apt-get update`` once if apt knows none."""
    if shutil.which("apt-cache") is None:
        raise VMUnavailable("apt-cache not found: cannot look up the Debian kernel package")
    name = _package_from_apt()
    if name is None and update:
        _run(["apt-get", "update", "-qq"])
        name = _package_from_apt()
    if name is None:
        raise VMUnavailable(f"apt knows no linux-image-6.1.0-<N>-amd64 package ({KERNEL_META_PACKAGE} "
                            "has no such dependency and apt-cache search finds none)")
    return name


def _cached_kernel(kernel_dir: Path) -> tuple[str, Path] | None:
    """(kernel release, vmlinuz) of a completely unpacked cached kernel, or None."""
    mark = kernel_dir / COMPLETE_MARK
    if not mark.is_file():
        return None
    kver = mark.read_text().strip()
    vmlinuz = kernel_dir / "boot" / f"vmlinuz-{kver}"
    if not vmlinuz.is_file() or not (kernel_dir / "lib" / "modules" / kver / "modules.dep").is_file():
        return None
    return kver, vmlinuz


def ensure_kernel(cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR) -> Path:
    """Path of the vmlinuz of the current Debian 6.1 kernel, unpacked (with modules) under cache_dir.

    Downloads and unpacks only when the cache lacks the current kernel (or apt cannot be asked and the
    cache has none). Raises VMUnavailable with the reason when it cannot.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    kernel_dir = cache / "kernel"
    with open(cache / ".lock", "w") as lock:  # two test runs must not unpack into one folder at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = _cached_kernel(kernel_dir)
        try:
            package = kernel_package_name()
        except (VMUnavailable, OSError, subprocess.SubprocessError):
            if cached is not None:
                return cached[1]  # offline, but a kernel from an earlier run is as good
            raise
        kver = KERNEL_PACKAGE.match(package)["kver"]
        if cached is not None and cached[0] == kver:
            return cached[1]
        for tool in ("apt-get", "dpkg", "depmod"):
            if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
                raise VMUnavailable(f"{tool} not found: cannot fetch and unpack {package}")
        with tempfile.TemporaryDirectory(prefix="kernel-", dir=cache) as tmp:
            download = Path(tmp, "deb")
            download.mkdir()
            os.chmod(tmp, 0o755)  # apt's _apt user may then write the download itself (no warning)
            os.chmod(download, 0o777)
            got = _run(["apt-get", "download", "-q", package], cwd=download)
            debs = sorted(download.glob(f"{package}_*.deb"))
            if got.returncode != 0 or not debs:
                raise VMUnavailable(f"apt-get download {package} failed (rc={got.returncode}): "
                                    f"{tail(got.stderr or got.stdout, 5)}")
            unpacked = Path(tmp, "kernel")
            got = _run(["dpkg", "-x", str(debs[-1]), str(unpacked)])
            if got.returncode != 0:
                raise VMUnavailable(f"dpkg -x {debs[-1].name} failed: {tail(got.stderr, 5)}")
            debs[-1].unlink()  # 70 MB not needed any more
            got = _run([shutil.which("depmod") or "/usr/sbin/depmod", "-b", str(unpacked), kver])
            if got.returncode != 0:
                raise VMUnavailable(f"depmod -b {unpacked} {kver} failed: {tail(got.stderr, 5)}")
            if not (unpacked / "boot" / f"vmlinuz-{kver}").is_file():
                raise VMUnavailable(f"{package} holds no boot/vmlinuz-{kver}")
            (unpacked / COMPLETE_MARK).write_text(kver + "\n")
            if kernel_dir.exists():
                shutil.rmtree(kernel_dir)  # an older kernel: replaced by the current one
            unpacked.rename(kernel_dir)
        cached = _cached_kernel(kernel_dir)
        assert cached is not None and cached[0] == kver
        return cached[1]


# --- the tools -------------------------------------------------------------------------------------


def vng_path() -> Path | None:
    """virtme-ng's ``vng`` (the repo's venv first, where ``virtme-run`` sits next to it)."""
    candidate = VENV_BIN / "vng"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("vng")
    return Path(found) if found else None


def vm_unavailable_reason(cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR) -> str | None:
    """Why no guest can be booted here, or None when run_in_vm can work (fetching the kernel if needed)."""
    if os.uname().machine != "x86_64":
        return f"the QEMU guest needs an x86_64 host (this is {os.uname().machine})"
    if os.geteuid() != 0:
        return "the QEMU guest's tests build network namespaces as root: run as root"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not found (Debian package qemu-system-x86)"
    if shutil.which("busybox") is None:
        return "busybox not found (Debian package busybox-static; virtme-ng builds its initramfs with it)"
    vng = vng_path()
    if vng is None:
        return "vng not found (PyPI package virtme-ng, in the repo's .venv)"
    if not (vng.parent / "virtme-run").exists() and shutil.which("virtme-run") is None:
        return f"virtme-run not found next to {vng} (reinstall virtme-ng)"
    try:
        ensure_kernel(cache_dir)
    except VMUnavailable as exc:
        return f"no guest kernel: {exc}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"no guest kernel: {type(exc).__name__}: {exc}"
    return None


# --- running a command in a guest ------------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes whose process group is pgid (read from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text(errors="replace").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def kill_group(pgid: int, wait: float = 10.0) -> None:
    """SIGKILL the process group pgid (a guest session run_in_vm or vmctl started) and wait until it is empty."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def cached_dirs(cwd: str | os.PathLike[str] = REPO_ROOT) -> list[str]:
    """Host folders the guest reads through the cached 9p mount: the repo (with .venv, also when .venv
    links out of the repo, as in a second checkout sharing one venv), Python's standard library and
    the usual binaries and libraries (what every python, ansible and ip start reads)."""
    dirs = [str(cwd), str(REPO_ROOT), str(VENV_BIN.parent), sysconfig.get_paths()["stdlib"],
            "/usr/bin", "/usr/sbin", f"/usr/lib/{os.uname().machine}-linux-gnu"]
    out: list[str] = []
    for d in dirs:
        d = os.path.realpath(d)
        if os.path.isdir(d) and d != "/" and not any(d == o or d.startswith(o + "/") for o in out):
            out.append(d)
    return out


def cached_root_prelude(dirs: Sequence[str], cwd: str | os.PathLike[str]) -> str:
    """Guest shell commands: mount the extra, cached 9p export of / and bind ``dirs`` from it in place.

    virtme-ng mounts the guest's root over 9p without caching, so every stat and open is a round trip
    to QEMU on the host: under TCG on a busy host that made ``import ansible`` take minutes. The extra
    export (read-only, ``cache=loose``) keeps dentries, inodes and pages in the guest. If the mount
    fails the guest goes on uncached (only slower) and says so in the log.
    """
    mnt = shlex.quote(GUEST_CACHED_ROOT)
    binds = " && ".join(f"mount --bind {mnt}{shlex.quote(d)} {shlex.quote(d)}" for d in dirs)
    return (f"if mkdir -p {mnt} && mount -t 9p -o {CACHED_ROOT_OPTIONS} {CACHED_ROOT_TAG} {mnt} && {binds}; "
            f"then :; else echo 'podnet-vm: no cached 9p root, going on uncached (slow)'; fi; "
            f"cd {shlex.quote(str(cwd))} || exit 1; ")


def vng_host_env(vng: Path) -> dict[str, str]:
    """The host environment for vng: this one, with vng's folder first on PATH (for virtme-run)."""
    host_env = dict(os.environ)
    host_env["PATH"] = f"{vng.parent}{os.pathsep}{host_env.get('PATH', GUEST_PATH)}"
    return host_env


def vng_argv(vng: Path, vmlinuz: Path, rwdir: Path, cwd: str | os.PathLike[str], command: Sequence[str], *,
             memory: str = GUEST_MEMORY, cpus: int = GUEST_CPUS, cached: bool = True) -> list[str]:
    """The vng command line that boots vmlinuz under TCG with ``rwdir`` shared read-write and runs
    ``command`` (short: the kernel command line carries it) in ``cwd``; with ``cached``, the extra
    read-only export of / that cached_root_prelude mounts."""
    # mitigations=off: the guest runs nothing but the tests, and under emulation the kernel's side-channel
    # mitigations (retpolines, buffer clearing) cost ~10% of a netlink- and fork-heavy test's time (measured)
    argv = [str(vng), "-r", str(vmlinuz), "--disable-kvm", "-m", memory, "--cpus", str(cpus),
            "--append=mitigations=off", "--rwdir", str(rwdir), "--cwd", str(cwd)]
    if cached:
        argv += [f"--qemu-opts=-fsdev local,id=podnetfs,path=/,readonly=on,security_model=none "
                 f"-device virtio-9p-pci,fsdev=podnetfs,mount_tag={CACHED_ROOT_TAG}"]
    return [*argv, "--", *command]


def guest_command(command: Sequence[str], out_dir: Path, env: Mapping[str, str] | None = None,
                  prelude: str = "") -> str:
    """The script the guest runs: ``{ <prelude> <cmd>; } > <out>/log 2>&1; echo $? > <out>/rc``
    (DESIGN section 6).

    ``<cmd>`` is ``command`` quoted with shlex, behind ``env K=V ...`` when env is given.
    """
    argv = list(command)
    if env:
        argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
    out = shlex.quote(str(out_dir))
    return f"{{ {prelude}{shlex.join(argv)}; }} > {out}/log 2>&1; echo $? > {out}/rc"


def run_in_vm(
    command: Sequence[str],
    timeout: float,
    *,
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
    env: Mapping[str, str] | None = None,
    memory: str = GUEST_MEMORY,
    cwd: str | os.PathLike[str] = REPO_ROOT,
    cpus: int = GUEST_CPUS,
    cached: bool = True,
) -> tuple[int | None, str]:
    """Boot one guest, run ``command`` (argv) in ``cwd`` as root, return (rc, log).

    rc is the command's exit status, or None when the guest never wrote one (it did not boot, crashed,
    or ran past ``timeout`` seconds and was killed); log is everything the command printed, followed
    in the None case by vng's own output. ``env`` is added to the command's environment; PATH starts
    with the repo's venv.
    """
    vmlinuz = ensure_kernel(cache_dir)
    vng = vng_path()
    if vng is None:
        raise VMUnavailable("vng not found (PyPI package virtme-ng)")
    host_env = vng_host_env(vng)
    with tempfile.TemporaryDirectory(prefix="podnet-vm-") as tmp:
        out = Path(tmp)
        os.chmod(out, 0o755)
        # PODNET_VM_OUT: the shared writable folder, for files the guest wants to hand back.
        guest_env = {"PATH": f"{VENV_BIN}:{GUEST_PATH}", "PODNET_VM_OUT": str(out), **(env or {})}
        prelude = cached_root_prelude(cached_dirs(cwd), cwd) if cached else ""
        # The script goes through the shared folder: the kernel command line (where vng puts the command)
        # holds only 2048 bytes.
        (out / "run.sh").write_text(guest_command(command, out, guest_env, prelude) + "\n")
        argv = vng_argv(vng, vmlinuz, out, cwd, ["bash", str(out / "run.sh")], memory=memory, cpus=cpus,
                        cached=cached)
        start = time.monotonic()
        # Own session: on a timeout the whole group (vng, qemu) is killed, nothing else.
        proc = subprocess.Popen(argv, cwd=cwd, env=host_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True)
        timed_out = False
        try:
            vng_output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc.pid)
            vng_output, _ = proc.communicate()
        finally:
            # Whatever happened (a timeout, pytest-timeout's alarm, Ctrl-C): no vng, virtme-run or qemu
            # of this group outlives the call. After a normal exit this finds nothing left.
            kill_group(proc.pid)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        seconds = time.monotonic() - start
        log_file, rc_file = out / "log", out / "rc"
        log = log_file.read_text(errors="replace") if log_file.exists() else ""
        rc_text = rc_file.read_text().strip() if rc_file.exists() else ""
        rc = int(rc_text) if rc_text.lstrip("-").isdigit() else None
        if rc is None:
            why = f"killed after {timeout:.0f} s" if timed_out else f"vng exited {proc.returncode}"
            log += (f"\n--- the guest wrote no exit status ({why}, {seconds:.0f} s); vng's output ---\n"
                    f"$ {shlex.join(argv)}\n{tail(vng_output or '', 80)}\n")
        return rc, log
