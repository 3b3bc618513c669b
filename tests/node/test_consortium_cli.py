"""scripts/consortium.py without starting nodes: layout, refusals, and clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.crypto import load_key
from node.config import load_node_config
from tests.node.helpers import Consortium


def test_init_writes_genesis_keys_and_configs(tmp_path: Path) -> None:
    from consortium import bank_name

    c = Consortium(tmp_path / "c")
    genesis = c.init(4)
    assert [m.member_id for m in genesis.members] == ["BANK-A", "BANK-B", "BANK-C", "BANK-D"]
    assert [a.asset for a in genesis.assets] == ["CHF.BANK-D", "EUR.BANK-B", "GBP.BANK-C", "USD.BANK-A"]
    assert c.genesis() == genesis and genesis.f == 1
    ports = [p for m in genesis.members for p in (m.api_port, m.replica_port)]
    assert len(set(ports)) == 8
    for m in genesis.members:
        assert load_key(c.operator_key_path(m.member_id)).public_key == m.operator_key
        assert load_key(c.node_key_path(m.member_id)).public_key == m.node_key
        cfg = load_node_config(c.config_path(m.member_id))
        assert cfg.member_id == m.member_id and cfg.api_listen == m.api_address
    assert bank_name(25) == "BANK-Z" and bank_name(26) == "BANK-AA"


def test_seven_banks_cycle_currencies_with_jpy_scale_zero(tmp_path: Path) -> None:
    genesis = Consortium(tmp_path / "c").init(7)
    assert genesis.f == 2
    jpy = genesis.asset("JPY.BANK-E")
    assert jpy is not None and jpy.scale == 0
    assert genesis.asset("USD.BANK-F") is not None


def test_the_batch_delay_per_arrival_grows_with_the_members_unless_set(tmp_path: Path) -> None:
    def per_tps(c: Consortium) -> set[int]:
        return {load_node_config(c.config_path(b)).limits.batch_delay_per_tps_us for b in c.banks()}

    four, seven, pinned = (Consortium(tmp_path / name) for name in ("four", "seven", "pinned"))
    four.init(4)
    seven.init(7)
    pinned.init(7, limits={"batch_delay_per_tps_us": 60})
    assert (per_tps(four), per_tps(seven), per_tps(pinned)) == ({100}, {175}, {60})


@pytest.mark.parametrize(("banks", "needle"), [(3, ">= 4"), (5, "3f\\+1")])
def test_init_refuses_bad_bank_counts(tmp_path: Path, banks: int, needle: str) -> None:
    from consortium import ConsortiumError

    with pytest.raises(ConsortiumError, match=needle):
        Consortium(tmp_path / "c").init(banks)


def test_init_twice_and_down_with_nothing_running_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from consortium import ConsortiumError, main

    c = Consortium(tmp_path / "c")
    c.init(4)
    with pytest.raises(ConsortiumError, match="already holds"):
        c.init(4)
    assert c.down() == []
    assert main(["--dir", str(c.dir), "down"]) == 0
    assert "nothing running" in capsys.readouterr().out
    assert main(["down", "--dir", str(c.dir)]) == 0  # --dir after the subcommand works too
    assert "nothing running" in capsys.readouterr().out
    assert main(["--dir", str(tmp_path / "absent"), "status"]) == 1
    assert "no consortium" in capsys.readouterr().err
    assert main(["--dir", str(c.dir), "kill", "BANK-Q"]) == 1
    assert "no bank" in capsys.readouterr().err
    assert main(["--dir", str(c.dir), "kill", "BANK-A"]) == 1
    assert "not running" in capsys.readouterr().err


def test_node_refuses_bad_config_and_wrong_key_with_clear_errors(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.node.helpers import ROOT

    def run_node(config: Path) -> subprocess.CompletedProcess[str]:
        # subprocess.run kills the child if the timeout passes: nothing outlives the test.
        return subprocess.run(
            [sys.executable, "-m", "node", "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    missing = run_node(tmp_path / "absent.json")
    assert missing.returncode == 2 and "cannot read node config" in missing.stderr
    c = Consortium(tmp_path / "c")
    c.init(4)
    doc = json.loads(c.config_path("BANK-A").read_text())
    doc["key_path"] = str(c.node_key_path("BANK-B"))  # another member's key
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(doc))
    result = run_node(wrong)
    assert result.returncode == 2 and "not the node key genesis lists for BANK-A" in result.stderr


def test_node_ports_are_a_free_block_outside_the_kernels_ephemeral_range(tmp_path: Path) -> None:
    from consortium import ephemeral_range

    low, high = ephemeral_range()
    genesis = Consortium(tmp_path / "c").init(7)
    ports = sorted(p for m in genesis.members for p in (m.api_port, m.replica_port))
    assert all(not low <= p <= high for p in ports), (ports, low, high)
    assert ports == list(range(ports[0], ports[0] + 14)), "one block of consecutive ports"


def test_free_ports_passes_over_a_taken_port_and_says_when_there_is_no_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    import consortium
    from consortium import ConsortiumError, free_ports

    # Four consecutive ports all free right now (a neighbour of a free port may be busy: seen
    # once, a fresh clone's run found base+2 taken).
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1] & ~3
        if all(consortium._binds(port) for port in range(base, base + 4)):
            break
    else:
        pytest.fail("no four consecutive free ports found to test with")
    monkeypatch.setattr(consortium, "PORT_MIN", base)
    room = (base + 4, consortium.PORT_MAX)  # the "ephemeral range" leaves base .. base+3
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", base + 1))
        thief.listen()
        assert {tuple(free_ports(2, room)) for _ in range(20)} == {(base + 2, base + 3)}
        with pytest.raises(ConsortiumError, match="no 3 free consecutive ports"):
            free_ports(3, room)
    with pytest.raises(ConsortiumError, match="no room for 5 ports"):
        free_ports(5, room)


def test_port_holders_names_the_process_and_the_state() -> None:
    import os
    import socket

    from node.ports import port_holders

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        held = port_holders(port)
    assert f"pid {os.getpid()} (" in held and "LISTEN" in held
    assert "no socket on it" in port_holders(port)


def test_backup_and_restore_refuse_what_would_be_unsafe(tmp_path: Path) -> None:
    import json

    from consortium import ConsortiumError

    from node.storage import blocks
    from node.storage.lmdb_store import LmdbStore
    from node.votes import RESTORED, VoteRecord

    c = Consortium(tmp_path / "c")
    c.init(4)
    data = c.node_config("BANK-C").data_dir
    with LmdbStore(data, map_size_bytes=1 << 24) as store, store.write() as w:
        w.put(blocks.LAST_EXECUTED, (7).to_bytes(8, "big"))
        w.put(blocks.STATE_ROOT, b"r" * 32)
    info = c.backup("BANK-C", tmp_path / "b")
    assert (info.member_id, info.height, info.state_root) == ("BANK-C", 7, (b"r" * 32).hex())
    assert json.loads((tmp_path / "b" / "backup.json").read_text())["height"] == 7
    with LmdbStore(tmp_path / "b", map_size_bytes=1 << 24) as copy, copy.read() as r:
        assert r.get(RESTORED) is not None  # whoever starts from it abstains first
    with pytest.raises(ConsortiumError, match="not empty"):
        c.backup("BANK-C", tmp_path / "b")
    with pytest.raises(ConsortiumError, match="backup of BANK-C"):
        c.restore("BANK-D", tmp_path / "b")  # another bank's store
    votes = c.node_config("BANK-C").votes_path
    with pytest.raises(ConsortiumError, match="no vote record"):
        c.restore("BANK-C", tmp_path / "b")  # it may have voted after the backup
    VoteRecord(2, 90).save(votes)
    assert c.restore("BANK-C", tmp_path / "b").height == 7
    c.wipe("BANK-C")
    assert not any(data.iterdir()) and VoteRecord.load(votes) == VoteRecord(2, 90)  # the record stays
