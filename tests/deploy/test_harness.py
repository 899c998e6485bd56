"""The deploy-test harness's own parsing, without root or hosts (runs in `make test`)."""
from __future__ import annotations

import ipaddress

from .cluster import (CLIENT2_IP, CTL_IP, INVENTORY, SUBNET, group_hosts, group_var, parse_changed_tasks,
                      parse_recap, read_inventory)
from .relay import Relay, apt_conf
from .rootfs import _deb822_stanzas, _one_line_sources, debian_sources, AptSource

OUTPUT = """\
PLAY [Base of every host] ******************************************************

TASK [common : Packages] *******************************************************
ok: [db1]
changed: [lb1]

PLAY RECAP *********************************************************************
db1                        : ok=67   changed=0    unreachable=0    failed=0    skipped=13   rescued=0    ignored=0
lb1                        : ok=28   changed=1    unreachable=0    failed=1    skipped=7    rescued=0    ignored=0
"""


def test_recap_and_changed_tasks():
    recap = parse_recap(OUTPUT)
    assert recap["db1"] == {"ok": 67, "changed": 0, "unreachable": 0, "failed": 0, "skipped": 13, "rescued": 0,
                            "ignored": 0}
    assert recap["lb1"]["changed"] == 1 and recap["lb1"]["failed"] == 1
    assert parse_changed_tasks(OUTPUT) == ["common : Packages => lb1"]


def test_the_test_inventory_stays_in_the_blackholed_subnet():
    hosts = read_inventory()
    assert {"lb1", "op1", "pub1", "db1", "db2", "pool1", "mon1", "db3"} <= set(hosts)
    assert "db3" not in read_inventory(INVENTORY)      # the spare: only add_replica.yml builds it
    net = ipaddress.ip_network(SUBNET)
    assert all(ipaddress.ip_address(a) in net and a not in (CTL_IP, CLIENT2_IP) for a in hosts.values())


def test_the_virtual_address_is_in_the_subnet_and_nobody_elses():
    """Two load balancers share mes_vip: an address of the test subnet that no host and no client has."""
    vip = group_var("lb", "mes_vip")
    assert len(group_hosts("lb")) >= 2
    assert ipaddress.ip_address(vip) in ipaddress.ip_network(SUBNET)
    assert vip not in {*read_inventory().values(), CTL_IP, CLIENT2_IP}


def test_apt_sources_of_both_formats():
    deb822 = """# comment
Types: deb
URIs: http://mirror.test/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://mirror.test/debian
Suites: bookworm
Components: main
"""
    stanzas = _deb822_stanzas(deb822)
    assert stanzas[0]["uris"] == "http://mirror.test/debian" and stanzas[1]["types"] == "deb-src"
    listed = _one_line_sources("deb [arch=amd64] http://mirror.test/debian-security bookworm-security main\n"
                               "# deb http://other.test/debian bookworm main\n")
    assert listed == [AptSource("http://mirror.test/debian-security", ("bookworm-security",), ("main",))]
    picked = debian_sources(listed + [AptSource("http://mirror.test/debian", ("bookworm", "sid"), ("main",)),
                                      AptSource("https://elsewhere.test/x", ("bookworm",), ("main",))])
    assert [(s.uri, s.suites) for s in picked] == [("http://mirror.test/debian-security", ("bookworm-security",)),
                                                   ("http://mirror.test/debian", ("bookworm",))]


def test_apt_conf_points_every_mirror_host_at_its_relay():
    relays = [Relay("mirror.test", 80, 3142, "/x/0.sock"), Relay("security.test", 80, 3143, "/x/1.sock")]
    conf = apt_conf(relays, through_proxy=False, ctl_ip=CTL_IP)
    assert f'Acquire::http::Proxy "http://{CTL_IP}:3142";' in conf
    assert f'Acquire::http::Proxy::security.test "http://{CTL_IP}:3143";' in conf
