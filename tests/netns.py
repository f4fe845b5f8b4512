"""Hosts for a test, made of Linux network namespaces: each its own network stack and address on a
private bridge, so the parts of fedprag reach each other over a network, not over loopback.

The root namespace is one host (the bridge's own address); each other host is a namespace joined
to the bridge by a veth pair. Needs root (CI runs as root) and ``ip`` (iproute2).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self


def available() -> bool:
    """Whether this process may make network namespaces: root, with ``ip``, allowed to add one."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"fedprag-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, timeout=30, check=False).returncode == 0
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, timeout=30, check=False)
    return made


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its address on the bridge, and its end of the link in the root namespace."""

    namespace: str
    address: str
    link: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace (``ip netns exec`` replaces itself with it: same PID)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        """Take the host's link down: from now on nothing reaches it, nor leaves it."""
        _ip("link", "set", self.link, "down")

    def mend(self) -> None:
        """Bring the host's link back up."""
        _ip("link", "set", self.link, "up")


class Network:
    """A bridge with an address in the root namespace (:attr:`address`), and one namespace per host
    name, each with the next address; removed whole on exit."""

    def __init__(self, names: Sequence[str]):
        tag = secrets.token_hex(3)
        self.subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
        self.bridge = f"fpb{tag}"
        self.address = f"{self.subnet}.1"
        self.hosts = {name: Host(f"fedprag-{tag}-{name}", f"{self.subnet}.{i}", f"fpv{tag}{i}")
                      for i, name in enumerate(names, 2)}

    def __enter__(self) -> Self:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for host in self.hosts.values():
                _ip("netns", "add", host.namespace)
                _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
                _ip("link", "set", host.link, "master", self.bridge, "up")
                for args in (("addr", "add", f"{host.address}/24", "dev", "eth0"), ("link", "set", "eth0", "up"),
                             ("link", "set", "lo", "up")):
                    _ip("-n", host.namespace, *args)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for host in self.hosts.values():  # a namespace's end of its veth pair goes with it, and so the pair
            subprocess.run(["ip", "netns", "delete", host.namespace], capture_output=True, timeout=30, check=False)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, timeout=30, check=False)
