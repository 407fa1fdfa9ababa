"""wireguard_keys.py and the wireguard_key module: X25519 against RFC 7748, `cryptography` and `wg`; the key
file and podnet's record (made, kept, rotated, removed), and everything that is not podnet's refused and left."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel import wireguard_keys as wk

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "collections/ansible_collections/podnet/dataplane/plugins/modules/wireguard_key.py"

# RFC 7748 section 6.1
ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PRIVATE = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


def key(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text)


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


def test_rfc7748_section_6_1_public_keys_and_shared_secret():
    assert wk.x25519_public_key(key(ALICE_PRIVATE)) == key(ALICE_PUBLIC)
    assert wk.x25519_public_key(key(BOB_PRIVATE)) == key(BOB_PUBLIC)
    assert wk.x25519(key(ALICE_PRIVATE), key(BOB_PUBLIC)) == key(SHARED)
    assert wk.x25519(key(BOB_PRIVATE), key(ALICE_PUBLIC)) == key(SHARED)


@pytest.mark.parametrize(("scalar", "u", "out"), [
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    # the top bit of u is set: X25519 masks it
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
])
def test_rfc7748_section_5_2_scalar_multiplication(scalar, u, out):
    assert wk.x25519(key(scalar), key(u)) == key(out)


def test_rfc7748_section_5_2_iterated_1000_times():
    k = u = (9).to_bytes(32, "little")
    for i in range(1000):
        k, u = wk.x25519(k, u), k
        if i == 0:
            assert k == key("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
    assert k == key("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")


def test_agrees_with_cryptography_on_20_random_keys():
    x25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.x25519")
    from cryptography.hazmat.primitives import serialization

    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    for _unused in range(20):
        private = os.urandom(32)  # unclamped: both sides clamp
        expected = x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(*raw)
        assert wk.x25519_public_key(private) == expected


@pytest.mark.skipif(shutil.which("wg") is None, reason="no wg tool")
def test_agrees_with_wg_pubkey_and_wg_genkey():
    for _unused in range(3):
        private = wk.encode_key(wk.new_private_key())
        out = subprocess.run(["wg", "pubkey"], input=private + "\n", capture_output=True, text=True, check=True)
        assert out.stdout == wk.encode_key(wk.x25519_public_key(wk.decode_key(private))) + "\n"
    generated = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    assert generated.endswith("\n") and len(wk.decode_key(generated[:-1])) == 32
    public = subprocess.run(["wg", "pubkey"], input=generated, capture_output=True, text=True, check=True).stdout
    assert public == wk.encode_key(wk.x25519_public_key(wk.decode_key(generated[:-1]))) + "\n"


def test_new_private_keys_are_clamped_and_differ():
    keys = {wk.new_private_key() for _unused in range(50)}
    assert len(keys) == 50
    for private in keys:
        assert len(private) == 32 and private[0] & 7 == 0 and private[31] & 128 == 0 and private[31] & 64


def test_decode_key_takes_exactly_wgs_form_and_never_repeats_the_text():
    text = base64.b64encode(key(ALICE_PRIVATE)).decode()
    assert len(text) == 44 and wk.decode_key(text) == key(ALICE_PRIVATE)
    bad = [text + "\n", " " + text, text[:-1], text[:-1] + "A", text[:43].replace(text[0], "-") + "=",
           text[:42] + "B=",  # padding bits set: wg refuses this one too
           base64.b64encode(b"x" * 31).decode(), base64.b64encode(b"x" * 33).decode(), "", "a" * 44]
    for candidate in bad:
        with pytest.raises(ValueError, match="not a WireGuard key") as raised:
            wk.decode_key(candidate)
        assert text[:20] not in str(raised.value)
    with pytest.raises(ValueError):
        wk.decode_key(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("device", ["", ".", "..", "a/b", "wg 0", "wg\t0", "wg:0", "a" * 16, "\u00e9" * 8, 7])
def test_bad_device_names_are_refused(tmp_path, device):
    with pytest.raises(ValueError, match="device"):
        wk.ensure_key(str(tmp_path), device, 0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("epoch", [-1, True, "1", 1.0, None])
def test_bad_epochs_are_refused(tmp_path, epoch):
    with pytest.raises(ValueError, match="epoch"):
        wk.ensure_key(str(tmp_path), "wg0", epoch)


def read_record(folder: Path, device: str = "wg0") -> dict:
    return json.loads((folder / f"{device}.json").read_text())


def test_created_then_kept_then_rotated(tmp_path):
    folder = tmp_path / "keys"
    created = wk.ensure_key(str(folder), "wg0", 0)
    key_file, record_file = folder / "wg0.key", folder / "wg0.json"
    assert (created.changed, created.action, created.path, created.epoch) == (True, "created", str(key_file), 0)
    assert mode(folder) == 0o700 and mode(key_file) == 0o600 and mode(record_file) == 0o600
    private_text = key_file.read_text()
    assert private_text.endswith("\n") and len(private_text) == 45
    derived = wk.encode_key(wk.x25519_public_key(wk.decode_key(private_text[:-1])))
    assert created.public_key == derived
    assert read_record(folder) == {"podnet": "wireguard-key", "device": "wg0", "epoch": 0, "public_key": derived}
    assert wk.public_key(str(folder), "wg0") == derived
    assert sorted(p.name for p in folder.iterdir()) == ["wg0.json", "wg0.key"]  # no temporary file left

    before = [os.stat(p) for p in (key_file, record_file)]
    kept = wk.ensure_key(str(folder), "wg0", 0)
    assert (kept.public_key, kept.changed, kept.action) == (derived, False, "kept")
    after = [os.stat(p) for p in (key_file, record_file)]
    assert [(s.st_ino, s.st_mtime_ns) for s in before] == [(s.st_ino, s.st_mtime_ns) for s in after]

    rotated = wk.ensure_key(str(folder), "wg0", 1)
    assert (rotated.changed, rotated.action, rotated.epoch) == (True, "rotated", 1)
    assert rotated.public_key not in (None, derived)
    assert key_file.read_text() != private_text
    assert read_record(folder)["epoch"] == 1 and read_record(folder)["public_key"] == rotated.public_key
    assert mode(key_file) == 0o600 and mode(record_file) == 0o600
    assert wk.ensure_key(str(folder), "wg0", 0).action == "rotated"  # any other epoch, lower too


def test_the_umask_is_the_callers_again_and_parent_folders_get_it(tmp_path):
    previous = os.umask(0o022)
    try:
        wk.ensure_key(str(tmp_path / "etc" / "wireguard"), "wg0", 0)
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(previous)
    assert mode(tmp_path / "etc") == 0o755 and mode(tmp_path / "etc" / "wireguard") == 0o700


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    if not folder.exists():
        return {}
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, mode(p)) for p in sorted(folder.iterdir())}


def test_check_mode_changes_nothing(tmp_path):
    folder = tmp_path / "keys"
    would = wk.ensure_key(str(folder), "wg0", 0, check=True)
    assert (would.public_key, would.changed, would.action) == (None, True, "created")
    assert not folder.exists()

    made = wk.ensure_key(str(folder), "wg0", 0)
    state = snapshot(folder)
    kept = wk.ensure_key(str(folder), "wg0", 0, check=True)
    assert (kept.public_key, kept.changed, kept.action) == (made.public_key, False, "kept")
    rotate = wk.ensure_key(str(folder), "wg0", 3, check=True)
    assert (rotate.public_key, rotate.changed, rotate.action, rotate.epoch) == (None, True, "rotated", 3)
    assert wk.remove_key(str(folder), "wg0", check=True) is True
    assert snapshot(folder) == state


def test_a_foreign_key_file_is_refused_and_left_byte_identical(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    foreign = folder / "wg0.key"
    content = wk.encode_key(wk.new_private_key()) + "\n"  # as `wg genkey > wg0.key` leaves it
    foreign.write_text(content)
    foreign.chmod(0o600)
    state = snapshot(folder)
    for call in (lambda: wk.ensure_key(str(folder), "wg0", 0), lambda: wk.ensure_key(str(folder), "wg0", 0, True),
                 lambda: wk.remove_key(str(folder), "wg0")):
        with pytest.raises(wk.ForeignKeyError, match="no record") as raised:
            call()
        assert str(foreign) in str(raised.value) and "Remove it" in str(raised.value)
        assert content.strip() not in str(raised.value)
    assert wk.public_key(str(folder), "wg0") is None
    assert snapshot(folder) == state


def test_a_record_naming_another_public_key_is_refused(tmp_path):
    folder = tmp_path / "keys"
    wk.ensure_key(str(folder), "wg0", 0)
    record = read_record(folder)
    record["public_key"] = wk.encode_key(wk.x25519_public_key(wk.new_private_key()))
    (folder / "wg0.json").write_text(json.dumps(record))
    state = snapshot(folder)
    with pytest.raises(wk.ForeignKeyError, match="not the one") as raised:
        wk.ensure_key(str(folder), "wg0", 5)
    assert (folder / "wg0.key").read_text().strip() not in str(raised.value)
    with pytest.raises(wk.ForeignKeyError):
        wk.remove_key(str(folder), "wg0")
    assert wk.public_key(str(folder), "wg0") is None
    assert snapshot(folder) == state


@pytest.mark.parametrize("record", [
    {"podnet": "wireguard-keys", "device": "wg0", "epoch": 0},
    {"device": "wg0"},
    [1, 2],
    "not json",
])
def test_a_record_that_is_not_podnets_is_refused(tmp_path, record):
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "wg0.json").write_text(record if isinstance(record, str) else json.dumps(record))
    state = snapshot(folder)
    with pytest.raises(wk.ForeignKeyError, match="not podnet's WireGuard key record"):
        wk.ensure_key(str(folder), "wg0", 0)
    with pytest.raises(wk.ForeignKeyError):
        wk.remove_key(str(folder), "wg0")
    assert snapshot(folder) == state


def test_a_damaged_record_of_podnets_is_refused(tmp_path):
    folder = tmp_path / "keys"
    wk.ensure_key(str(folder), "wg0", 0)
    record = read_record(folder)
    (folder / "wg0.json").write_text(json.dumps(dict(record, epoch=-1)))
    with pytest.raises(wk.ForeignKeyError, match="damaged"):
        wk.ensure_key(str(folder), "wg0", 0)
    (folder / "wg0.json").write_text(json.dumps(dict(record, device="wg1")))
    with pytest.raises(wk.ForeignKeyError, match="damaged"):
        wk.ensure_key(str(folder), "wg0", 0)


def test_a_key_file_readable_by_others_is_refused(tmp_path):
    folder = tmp_path / "keys"
    wk.ensure_key(str(folder), "wg0", 0)
    (folder / "wg0.key").chmod(0o644)
    state = snapshot(folder)
    with pytest.raises(wk.ForeignKeyError, match="mode 0644, not 0600"):
        wk.ensure_key(str(folder), "wg0", 0)
    assert snapshot(folder) == state


def test_symbolic_links_are_refused(tmp_path):
    real = tmp_path / "real"
    made = wk.ensure_key(str(real), "wg0", 0)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(wk.ForeignKeyError, match="symbolic link"):
        wk.ensure_key(str(link), "wg0", 0)
    with pytest.raises(wk.ForeignKeyError, match="symbolic link"):
        wk.remove_key(str(link), "wg0")
    assert wk.public_key(str(link), "wg0") is None

    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "wg0.key").symlink_to(real / "wg0.key")
    (folder / "wg0.json").symlink_to(real / "wg0.json")
    with pytest.raises(wk.ForeignKeyError, match="key file is a symbolic link"):
        wk.ensure_key(str(folder), "wg0", 0)
    (folder / "wg0.key").unlink()
    with pytest.raises(wk.ForeignKeyError, match="key record is a symbolic link"):
        wk.ensure_key(str(folder), "wg0", 0)
    assert wk.public_key(str(real), "wg0") == made.public_key  # the links' targets untouched


def test_a_record_alone_is_podnets_leftover(tmp_path):
    folder = tmp_path / "keys"
    wk.ensure_key(str(folder), "wg0", 0)
    (folder / "wg0.key").unlink()  # as a removal killed between its two steps leaves it
    assert wk.public_key(str(folder), "wg0") is None
    assert wk.ensure_key(str(folder), "wg0", 0).action == "created"
    (folder / "wg0.key").unlink()
    assert wk.remove_key(str(folder), "wg0") is True and not folder.exists()


def test_remove_key_removes_only_podnets_and_the_empty_folder(tmp_path):
    folder = tmp_path / "keys"
    assert wk.remove_key(str(folder), "wg0") is False  # nothing there
    wk.ensure_key(str(folder), "wg0", 0)
    wk.ensure_key(str(folder), "wg1", 0)
    (folder / "notes.txt").write_text("someone's\n")
    assert wk.remove_key(str(folder), "wg0") is True
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "wg1.json", "wg1.key"]
    assert wk.remove_key(str(folder), "wg0") is False
    assert wk.remove_key(str(folder), "wg1") is True
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # not empty: kept
    (folder / "notes.txt").unlink()
    wk.ensure_key(str(folder), "wg1", 0)
    assert wk.remove_key(str(folder), "wg1") is True
    assert not folder.exists()


def run_module(tmp_path: Path, check: bool = False, diff: bool = False, **args) -> dict:
    """The module as Ansible runs it on a node: `python wireguard_key.py args.json`; its result and stdout."""
    arguments = tmp_path / "args.json"
    arguments.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check,
                                                                 _ansible_diff=diff)}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "collections"), *sys.path]))
    proc = subprocess.run([sys.executable, str(MODULE), str(arguments)], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    result = json.loads(proc.stdout)
    result["_stdout"] = proc.stdout + proc.stderr
    return result


def test_the_module_never_shows_the_private_key(tmp_path):
    folder = tmp_path / "keys"
    would = run_module(tmp_path, check=True, diff=True, device="wg0", key_dir=str(folder))
    assert (would["changed"], would["action"], would["public_key"]) == (True, "created", None)
    assert not folder.exists()

    made = run_module(tmp_path, diff=True, device="wg0", key_dir=str(folder))
    private = (folder / "wg0.key").read_text().strip()
    assert (made["changed"], made["action"], made["epoch"], made["path"]) == (True, "created", 0,
                                                                              str(folder / "wg0.key"))
    assert made["public_key"] == wk.public_key(str(folder), "wg0")
    assert made["diff"]["after"] == f"public_key: {made['public_key']}\nepoch: 0\n"
    assert private not in made["_stdout"] and base64.b64decode(private).hex() not in made["_stdout"]

    kept = run_module(tmp_path, diff=True, device="wg0", key_dir=str(folder), epoch=0)
    assert (kept["changed"], kept["action"], kept["public_key"]) == (False, "kept", made["public_key"])
    assert private not in kept["_stdout"]

    rotated = run_module(tmp_path, diff=True, device="wg0", key_dir=str(folder), epoch=2)
    assert (rotated["changed"], rotated["action"], rotated["epoch"]) == (True, "rotated", 2)
    assert rotated["diff"]["before"] == f"public_key: {made['public_key']}\nepoch: 0\n"
    assert private not in rotated["_stdout"]
    assert (folder / "wg0.key").read_text().strip() not in rotated["_stdout"]

    (folder / "wg1.key").write_text(private + "\n")  # someone else's
    (folder / "wg1.key").chmod(0o600)
    refused = run_module(tmp_path, device="wg1", key_dir=str(folder))
    assert refused["failed"] and str(folder / "wg1.key") in refused["msg"] and private not in refused["_stdout"]

    gone = run_module(tmp_path, diff=True, device="wg0", key_dir=str(folder), state="absent")
    assert (gone["changed"], gone["action"], gone["public_key"]) == (True, "removed", None)
    assert sorted(p.name for p in folder.iterdir()) == ["wg1.key"]
