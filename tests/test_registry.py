"""The file registry on a real filesystem, and its locks across real processes."""

import json
import asyncio
import multiprocessing

import pytest

from codeb_tui.domain.errors import LockHeld, RegistryCorrupt
from codeb_tui.domain.model import Environment, ProjectSlots, Slot, SlotName, SlotState
from codeb_tui.domain.ports import PortSources, allocate_port_pair
from codeb_tui.domain.errors import PortRangeFull
from codeb_tui.registry.files import FileRegistry

PROD = Environment.PRODUCTION


def pair(project="shop", port=4100):
    return ProjectSlots(project, PROD, Slot(SlotName.BLUE, port), Slot(SlotName.GREEN, port + 1))


def test_ssot_keeps_the_seed_shape_and_extra_keys(tmp_path):
    reg = FileRegistry(tmp_path)
    reg.ssot_path.parent.mkdir(parents=True, exist_ok=True)
    reg.ssot_path.write_text(json.dumps({"ports": {"used": [4100, 4101], "allocated": {"4100": "a", "4101": "a"}},
                                         "note": "kept"}))
    ssot = reg.read_ssot()
    ssot.allocated.update({4102: "b", 4103: "b"})
    reg.write_ssot(ssot)
    data = json.loads(reg.ssot_path.read_text())
    assert data == {"note": "kept", "ports": {"used": [4100, 4101, 4102, 4103],
                                              "allocated": {"4100": "a", "4101": "a", "4102": "b", "4103": "b"}}}


def test_slot_file_roundtrip_and_versions(tmp_path):
    reg = FileRegistry(tmp_path)
    written = reg.write_slots(pair())
    assert written.version == 1
    again = reg.write_slots(written.with_slot(written.blue.with_(state=SlotState.DEPLOYED, image="r/x:1")),
                            expected_version=1)
    assert again.version == 2
    read = reg.read_slots("shop", PROD)
    assert read.blue.state is SlotState.DEPLOYED and read.blue.image == "r/x:1" and read.version == 2
    assert (tmp_path / "slots" / "shop-prod.json").exists()
    with pytest.raises(RegistryCorrupt, match="changed while the operation ran"):
        reg.write_slots(read, expected_version=1)
    assert not list((tmp_path / "slots").glob(".*.tmp"))


@pytest.mark.parametrize("content, why", [
    ("{not json", "not valid JSON"),
    ('{"project": "shop", "environment": "production", "version": 1, "slots": {"blue": {}}}', "exactly 'blue' and 'green'"),
    ('{"project": "other", "environment": "production", "version": 1, "slots": {}}', "expected 'shop'"),
])
def test_corrupt_slot_file_is_named_and_never_overwritten(tmp_path, content, why):
    reg = FileRegistry(tmp_path)
    path = reg.slot_path("shop", PROD)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(RegistryCorrupt) as info:
        reg.read_slots("shop", PROD)
    assert str(path) in str(info.value) and why in str(info.value)
    with pytest.raises(RegistryCorrupt):
        reg.write_slots(pair())
    assert path.read_text() == content


def test_corrupt_ssot_is_named(tmp_path):
    reg = FileRegistry(tmp_path)
    reg.root.mkdir(exist_ok=True)
    reg.ssot_path.write_text('{"ports": {"used": ["x"], "allocated": {}}}')
    with pytest.raises(RegistryCorrupt, match="ssot.json"):
        reg.read_ssot()


def _hold_lock(root, ready, release):
    async def hold():
        async with FileRegistry(root).project_lock("shop", PROD, "deploy"):
            ready.set()
            await asyncio.to_thread(release.wait, 10)

    asyncio.run(hold())


async def test_lock_refuses_another_process_naming_the_holder(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(LockHeld) as info:
            async with FileRegistry(tmp_path).project_lock("shop", PROD, "promote"):
                pass
        message = str(info.value)
        assert f"pid {proc.pid}" in message and "deploy shop (production)" in message and "since" in message
    finally:
        release.set()
        proc.join(10)
    # Released with the holder: the lock can be taken again at once.
    async with FileRegistry(tmp_path).project_lock("shop", PROD, "promote"):
        pass


async def test_lock_of_a_killed_holder_is_free(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    proc.start()
    assert ready.wait(10)
    proc.kill()
    proc.join(10)
    async with FileRegistry(tmp_path).project_lock("shop", PROD, "deploy"):
        pass


def sources(registry=(), containers=(), listening=()):
    return PortSources(frozenset(registry), frozenset(containers), frozenset(listening))


def test_allocation_skips_every_source():
    assert allocate_port_pair((4100, 4499), sources(), "production") == (4100, 4101)
    assert allocate_port_pair((4100, 4499), sources(registry={4100, 4101}), "production") == (4102, 4103)
    assert allocate_port_pair((4100, 4499), sources(containers={4101}), "production") == (4102, 4103)
    assert allocate_port_pair((4100, 4499), sources(listening={4103}, registry={4100}), "production") == (4104, 4105)


def test_full_range_is_a_clear_error():
    with pytest.raises(PortRangeFull, match="staging's range 4500-4503"):
        allocate_port_pair((4500, 4503), sources(registry={4500}, listening={4503}), "staging")


async def test_no_lock_file_outlives_its_operation_and_waiters_stay_exclusive(tmp_path):
    """The holder removes the lock file as it lets go; waiters that had opened the removed file
    open the path again, so at most one holds the lock at any time."""
    reg = FileRegistry(tmp_path, lock_wait=10)
    inside = 0
    most = 0

    async def worker() -> None:
        nonlocal inside, most
        for _ in range(20):
            async with reg.project_lock("shop", PROD, "deploy"):
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.001)
                inside -= 1

    await asyncio.gather(*(worker() for _ in range(4)))
    assert most == 1
    assert list((tmp_path / "locks").iterdir()) == []


def test_a_slot_file_changed_in_place_is_read_again(tmp_path):
    """read_slots keeps a parse while the file is unchanged: an edit that keeps its size (by
    hand, in place, no rename) must still be seen, and so must a removal."""
    reg = FileRegistry(tmp_path)
    written = reg.write_slots(pair())
    assert reg.read_slots("shop", PROD) == written  # parsed, then kept
    path = reg.slot_path("shop", PROD)
    text = path.read_text()
    edited = text.replace('"port": 4100', '"port": 4200').replace('"port": 4101', '"port": 4201')
    assert len(edited) == len(text) and edited != text
    with open(path, "r+") as f:  # in place: same inode, same size
        f.write(edited)
    assert reg.read_slots("shop", PROD).blue.port == 4200
    assert reg.read_all_readable()[0][0].green.port == 4201
    path.write_text("{")
    with pytest.raises(RegistryCorrupt):
        reg.read_slots("shop", PROD)
    path.unlink()
    assert reg.read_slots("shop", PROD) is None


async def test_local_listening_ports_by_netlink_match_proc_net_tcp():
    """LocalHost asks the kernel for listening sockets over sock_diag; it must see what
    /proc/net/tcp{,6} lists, a socket just opened on IPv4 and one on IPv6 included."""
    import socket

    from codeb_tui.infra.host import _read_listening_ports, _sock_diag_listening_ports

    with socket.socket() as v4, socket.socket(socket.AF_INET6) as v6:
        v4.bind(("127.0.0.1", 0))
        v4.listen()
        v6.bind(("::1", 0))
        v6.listen()
        ours = {v4.getsockname()[1], v6.getsockname()[1]}
        for _ in range(3):  # another program may open or close a listener in between
            by_netlink, by_proc = _sock_diag_listening_ports(), _read_listening_ports()
            if by_netlink == by_proc:
                break
        assert ours <= by_netlink
        assert by_netlink == by_proc
    assert not ours & _sock_diag_listening_ports()


def test_any_slot_in_use_reads_up_to_the_first_one_and_skips_broken_files(tmp_path):
    """The console's "Caddy restarted empty" check asks whether any slot is in use: all-empty
    files (first deploys under way) are nothing to serve, a corrupt file is no answer."""
    reg = FileRegistry(tmp_path)
    assert not reg.any_slot_in_use()  # no slots/ at all
    for i in range(5):
        reg.write_slots(pair(f"p{i}", 4100 + 2 * i))
    (tmp_path / "slots" / "broken-prod.json").write_text("{not json")
    assert not reg.any_slot_in_use()
    live = reg.read_slots("p3", PROD)
    reg.write_slots(live.with_slot(live.blue.with_(state=SlotState.ACTIVE, image="r/x:1")),
                    expected_version=live.version)
    assert reg.any_slot_in_use()
