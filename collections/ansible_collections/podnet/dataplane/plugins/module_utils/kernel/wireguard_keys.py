# Copyright: podnet contributors
# Apache License 2.0
"""A node's WireGuard private key, kept in a file the way `wg genkey` writes one, and podnet's record of it.

For a device D in a folder K (default /etc/podnet/wireguard):

- `K/D.key` (mode 0600): the private key as `wg genkey` prints it (44 characters of base64 and a newline),
  so `wg set D private-key K/D.key` reads it as it is;
- `K/D.json` (mode 0600): podnet's record, `{"podnet": "wireguard-key", "device": D, "epoch": N,
  "public_key": "<base64>"}`.

The record is podnet's marker. A key file is podnet's only when its record exists, carries exactly that
"podnet" value and names the public key derived from the key file; anything else in those two places is
someone else's, and podnet refuses (ForeignKeyError) to replace or remove it.

The key file is written before the record, so a run killed between the two writes leaves a key file that
the record does not vouch for (no record, or the previous key's); the next run refuses it like any
foreign key, and removing the file lets podnet make a new one. Removal goes the other way round (the key
file first), so a killed removal leaves only podnet's record, which the next run replaces or removes.

The private key is never returned, logged or put into a message: only paths and public keys are.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from ansible_collections.podnet.dataplane.plugins.module_utils.node.files import (
    atomic_write,
    make_folder,
    remove,
)

DEFAULT_FOLDER = "/etc/podnet/wireguard"
RECORD_MARK = "wireguard-key"
KEY_MODE = 0o600
RECORD_MODE = 0o600
FOLDER_MODE = 0o700
KEY_SIZE = 32

# Files this large hold no key or record of podnet's; reading no further keeps a stray big file harmless.
_READ_LIMIT = 64 * 1024

# `wg` accepts exactly this: 43 base64 characters and the '=' of 32 bytes, whose last character leaves the
# two unused bits zero (wg's decoder rejects a key whose padding bits are set).
_KEY_TEXT = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")

# What the kernel's dev_valid_name allows: up to IFNAMSIZ-1 bytes, no '/', ':' or whitespace, not "." or "..".
IFNAMSIZ = 15
_DEVICE = re.compile(r"[^/:\s\x00]{1,15}")

# Curve25519 over GF(2^255 - 19) (RFC 7748 section 4.1).
_P = 2**255 - 19
_A24 = 121665
_BASE_POINT = (9).to_bytes(32, "little")


class ForeignKeyError(Exception):
    """A key file or record podnet would write or remove is not podnet's (or not as podnet left it)."""


@dataclass(frozen=True)
class KeyResult:
    public_key: str | None  # None in check mode for a key that would be created or rotated
    changed: bool
    action: str  # "kept", "created" or "rotated"
    path: str  # the key file
    epoch: int


@dataclass(frozen=True)
class KeyRecord:
    """podnet's record of a key whose key file it verified."""

    public_key: str
    epoch: int


# x25519 is written out here, not taken from `cryptography`, because modules run on the node with the
# node's own Python, where `cryptography` is not guaranteed to be installed; the standard library has no
# Curve25519. One call takes about 2 ms (2.0 to 2.5 ms measured, mean of 500 calls, CPython 3.11.7 on the
# 2-core Xeon test machine); a run makes at most two. Python ints do not run in constant time, so the
# ladder's fixed structure (the same operations for every bit, the swap done by arithmetic) is tidiness
# rather than a timing guarantee: it derives a public key on the node that holds the private one, where no
# attacker times it.
def _clamp(scalar: bytes) -> bytes:
    clamped = bytearray(scalar)
    clamped[0] &= 248
    clamped[31] &= 127
    clamped[31] |= 64
    return bytes(clamped)


def x25519(scalar: bytes, u_coordinate: bytes) -> bytes:
    """The X25519 function of RFC 7748 section 5: the scalar (clamped) times the point u, both 32 bytes."""
    if len(scalar) != KEY_SIZE or len(u_coordinate) != KEY_SIZE:
        raise ValueError("x25519 takes a 32-byte scalar and a 32-byte u-coordinate")
    k = int.from_bytes(_clamp(scalar), "little")
    x1 = int.from_bytes(u_coordinate, "little") & ((1 << 255) - 1)  # the top bit is masked (section 5)
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in range(254, -1, -1):
        k_t = (k >> t) & 1
        swap ^= k_t
        x2, x3, z2, z3 = _cswap(swap, x2, x3, z2, z3)
        swap = k_t
        a = x2 + z2
        aa = a * a % _P
        b = x2 - z2
        bb = b * b % _P
        e = aa - bb
        c = x3 + z3
        d = x3 - z3
        da = d * a % _P
        cb = c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    x2, x3, z2, z3 = _cswap(swap, x2, x3, z2, z3)
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(KEY_SIZE, "little")


def _cswap(swap: int, x2: int, x3: int, z2: int, z3: int) -> tuple[int, int, int, int]:
    dx = swap * (x2 - x3)
    dz = swap * (z2 - z3)
    return x2 - dx, x3 + dx, z2 - dz, z3 + dz


def x25519_public_key(private: bytes) -> bytes:
    """The public key of a private key, as `wg pubkey` derives it (X25519 with the base point 9)."""
    return x25519(private, _BASE_POINT)


def new_private_key() -> bytes:
    """32 random bytes, clamped as `wg genkey` stores them."""
    return _clamp(os.urandom(KEY_SIZE))


def encode_key(key: bytes) -> str:
    """A key as `wg genkey`/`wg pubkey` print it (without the newline)."""
    if len(key) != KEY_SIZE:
        raise ValueError(f"a WireGuard key is {KEY_SIZE} bytes, not {len(key)}")
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """The 32 bytes of a key in `wg`'s text form; ValueError otherwise. The message never repeats the text
    (it may be a private key)."""
    if not isinstance(text, str) or not _KEY_TEXT.fullmatch(text):
        length = len(text) if isinstance(text, str) else None
        raise ValueError("not a WireGuard key: one is 44 characters of standard base64 ending in '=' "
                         f"(as `wg genkey` prints it); got {length if length is not None else 'no text'}"
                         f"{' characters' if length is not None else ''}")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:  # unreachable after the full match; kept so no decoder message leaks text
        raise ValueError("not a WireGuard key: its base64 does not decode") from None


def key_paths(folder: str, device: str) -> tuple[str, str]:
    """The key file and the record of `device` in `folder`."""
    return os.path.join(folder, f"{device}.key"), os.path.join(folder, f"{device}.json")


def check_device(device: object) -> str:
    if not isinstance(device, str) or not _DEVICE.fullmatch(device) or device in (".", ".."):
        raise ValueError(f"device: {device!r} is not a Linux interface name (1 to {IFNAMSIZ} characters, no '/', "
                         "':' or whitespace, not '.' or '..')")
    if len(device.encode("utf-8", "surrogatepass")) > IFNAMSIZ:
        raise ValueError(f"device: {device!r} is longer than the {IFNAMSIZ} bytes Linux allows")
    return device


def check_epoch(epoch: object) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch: {epoch!r} must be a non-negative integer")
    return epoch


@dataclass(frozen=True)
class _Found:
    key_file: bool  # a key file is there (podnet's: _inspect refuses any other)
    record_file: bool  # podnet's record is there
    record: KeyRecord | None  # the record, when the key file is there and matches it


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _regular_or_refuse(path: str, what: str) -> bool:
    """Whether `path` is there; a symlink or anything but a plain file is refused."""
    info = _lstat(path)
    if info is None:
        return False
    if stat.S_ISLNK(info.st_mode):
        raise ForeignKeyError(f"{path}: the {what} is a symbolic link; podnet neither follows nor replaces one "
                              "(remove it, and podnet makes its own)")
    if not stat.S_ISREG(info.st_mode):
        raise ForeignKeyError(f"{path}: the {what} is not a plain file; podnet leaves it alone (remove it, and "
                              "podnet makes its own)")
    return True


def _read(path: str) -> tuple[bytes, int]:
    """A plain file's bytes (up to the limit) and mode, read without following a link planted meanwhile."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ForeignKeyError(f"{path}: not a plain file; podnet leaves it alone (remove it, and podnet makes "
                                  "its own)")
        chunks = []
        size = 0
        while size <= _READ_LIMIT:
            chunk = os.read(fd, _READ_LIMIT + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), stat.S_IMODE(info.st_mode)
    finally:
        os.close(fd)


def _read_record(path: str, device: str) -> KeyRecord:
    """podnet's record at `path` (which is a plain file); ForeignKeyError when it is not podnet's or is
    damaged."""
    content = _read(path)[0]
    try:
        record = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("podnet") != RECORD_MARK:
        raise ForeignKeyError(f"{path}: not podnet's WireGuard key record (no \"podnet\": \"{RECORD_MARK}\"); podnet "
                              "neither replaces nor removes it (remove it, and the key file beside it, for podnet "
                              "to make its own)")
    public = record.get("public_key")
    epoch = record.get("epoch")
    if (record.get("device") != device or not isinstance(public, str) or not _KEY_TEXT.fullmatch(public)
            or isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise ForeignKeyError(f"{path}: podnet's WireGuard key record is damaged (it must name device {device!r}, "
                              "a non-negative integer epoch and a public key); remove it and the key file beside "
                              "it, and podnet makes a new key")
    return KeyRecord(public_key=public, epoch=epoch)


def _private_key_in(content: bytes) -> bytes | None:
    """The private key a file's bytes hold in `wg genkey`'s form (surrounding whitespace allowed), or None."""
    try:
        return decode_key(content.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


def read_private_key(path: str) -> bytes:
    """The 32 bytes of the private key file at `path` (`wg genkey`'s form), read without following a link.
    ValueError when it holds no key, OSError when it cannot be read; neither message holds the file's text."""
    try:
        content = _read(path)[0]
    except ForeignKeyError as exc:
        raise ValueError(str(exc)) from None
    private = _private_key_in(content)
    if private is None:
        raise ValueError(f"{path} does not hold a WireGuard private key as `wg genkey` writes it")
    return private


def key_file_public_key(path: str) -> str:
    """The public key (`wg pubkey`'s form) of the private key file at `path`; read_private_key's errors."""
    return encode_key(x25519_public_key(read_private_key(path)))


def _key_file_public_key(path: str) -> tuple[str | None, int]:
    """The public key derived from the key file (None when it holds no key) and the file's mode."""
    content, mode = _read(path)
    private = _private_key_in(content)
    return (None if private is None else encode_key(x25519_public_key(private))), mode


def _inspect(folder: str, device: str) -> _Found:
    """What is in the device's two places; ForeignKeyError for anything that is not podnet's."""
    key_path, record_path = key_paths(folder, device)
    folder_info = _lstat(folder)
    if folder_info is None:
        return _Found(False, False, None)
    if stat.S_ISLNK(folder_info.st_mode):
        raise ForeignKeyError(f"{folder}: the key folder is a symbolic link; podnet keeps private keys only in a "
                              "real folder (give key_dir the link's target, or remove the link)")
    if not stat.S_ISDIR(folder_info.st_mode):
        raise ForeignKeyError(f"{folder}: the key folder is not a folder (remove it, or choose another key_dir)")
    has_key = _regular_or_refuse(key_path, "key file")
    has_record = _regular_or_refuse(record_path, "key record")
    record = _read_record(record_path, device) if has_record else None
    if not has_key:
        return _Found(False, has_record, None)
    if record is None:
        raise ForeignKeyError(f"{key_path}: a key file podnet has no record of ({record_path} is missing): someone "
                              "else's key, or one a run was killed before recording; podnet does not replace it. "
                              "Remove it, and podnet makes a new key")
    public, mode = _key_file_public_key(key_path)
    if public is None:
        raise ForeignKeyError(f"{key_path}: does not hold a WireGuard key as `wg genkey` writes it; podnet does not "
                              "replace it. Remove it and its record, and podnet makes a new key")
    if public != record.public_key:
        raise ForeignKeyError(f"{key_path}: its public key is not the one {record_path} records: someone else's "
                              "key, or one a run was killed before recording; podnet does not replace it. Remove "
                              "it and its record, and podnet makes a new key")
    if mode != KEY_MODE:
        raise ForeignKeyError(f"{key_path}: podnet's private key has mode {mode:04o}, not {KEY_MODE:04o}; others may "
                              "have read it. Remove it for podnet to make a new one (or chmod 600 it to keep it)")
    return _Found(True, True, record)


def _record_text(device: str, epoch: int, public: str) -> str:
    return json.dumps({"podnet": RECORD_MARK, "device": device, "epoch": epoch, "public_key": public},
                      sort_keys=True) + "\n"


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    # atomic_write creates its temporary file under the umask and chmods it after writing: under 0o077 the
    # private key is never, even for that moment or in a killed writer's leftover, readable by others.
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def recorded(folder: str, device: str) -> KeyRecord | None:
    """podnet's record of the device's key, when podnet's key is there and verified; None otherwise (also when
    what is there is not podnet's: ensure_key and remove_key say why)."""
    check_device(device)
    try:
        return _inspect(folder, device).record
    except ForeignKeyError:
        return None


def public_key(folder: str, device: str) -> str | None:
    """The recorded public key when podnet's key is there (verified as ensure_key does), else None;
    ValueError for a bad device name."""
    record = recorded(folder, device)
    return record.public_key if record else None


def ensure_key(folder: str, device: str, epoch: int, check: bool = False) -> KeyResult:
    """Make sure podnet's key of `device` is in `folder` with this epoch: made when absent, replaced by a new
    one when its epoch differs (rotation), kept otherwise. Check mode changes nothing; it returns the public
    key only when the key is kept (a key it would make does not exist yet). ForeignKeyError when what is
    there is not podnet's; ValueError for a bad device or epoch."""
    check_device(device)
    check_epoch(epoch)
    key_path, record_path = key_paths(folder, device)
    found = _inspect(folder, device)
    if found.record is not None and found.record.epoch == epoch:
        return KeyResult(found.record.public_key, False, "kept", key_path, epoch)
    action = "created" if found.record is None else "rotated"
    if check:
        return KeyResult(None, True, action, key_path, epoch)
    private = new_private_key()
    public = encode_key(x25519_public_key(private))
    make_folder(folder, FOLDER_MODE)  # outside the umask: missing parent folders get the usual modes
    with _private_umask():
        atomic_write(key_path, encode_key(private) + "\n", KEY_MODE, FOLDER_MODE)
        atomic_write(record_path, _record_text(device, epoch, public), RECORD_MODE, FOLDER_MODE)
    return KeyResult(public, True, action, key_path, epoch)


def remove_key(folder: str, device: str, check: bool = False) -> bool:
    """Remove podnet's key of `device` and its record, then the folder when that leaves it empty; whether
    there was anything of podnet's to remove (check mode: whether there would be). A key file or record that
    is not podnet's is not touched: ForeignKeyError says which and why, so a removal never reports success
    while someone's key stays where podnet's was."""
    check_device(device)
    key_path, record_path = key_paths(folder, device)
    found = _inspect(folder, device)
    if not found.key_file and not found.record_file:
        return False
    if not check:
        remove(key_path)
        remove(record_path)
        with contextlib.suppress(OSError):  # not empty (someone else's files), or in use: left
            os.rmdir(folder)
    return True
