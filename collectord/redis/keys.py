"""Every Redis key and channel name, in one place.

Tenant names and metric names cannot hold ':' (their patterns forbid it), nor can the prefix,
so a name splits back into its parts unambiguously. Every key that holds tenant data names
its tenant: one tenant's reads never meet another's keys.
"""

from __future__ import annotations

import msgspec

from collectord.model import Tags

_encode = msgspec.json.Encoder().encode


def tags_id(tags: Tags) -> str:
    """A series' tags as the member of its metric's realtime index (JSON, keys sorted)."""
    return _encode(dict(tags)).decode()


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        # Every daemon's announced stream interest: node id -> when it expires.
        self.nodes = f"{prefix}:nodes"
        # A daemon publishes its node id here whenever its interest changes.
        self.interest_changed = f"{prefix}:interest"

    def realtime(self, tenant: str, name: str, tags: str) -> str:
        """Hash: v (value), t (timestamp), y (type)."""
        return f"{self.prefix}:rt:{tenant}:{name}:{tags}"

    def recent(self, tenant: str, name: str, tags: str) -> str:
        """List of a distribution's latest values, newest first."""
        return f"{self.prefix}:rtl:{tenant}:{name}:{tags}"

    def realtime_index(self, tenant: str, name: str) -> str:
        """Sorted set: tags id -> when the series was last written."""
        return f"{self.prefix}:rti:{tenant}:{name}"

    def stream(self, tenant: str, name: str) -> str:
        return f"{self.prefix}:s:{tenant}:{name}"

    def parse_stream(self, channel: str) -> tuple[str, str] | None:
        """(tenant, name) of a stream channel, None for anything else."""
        parts = channel.split(":")
        if len(parts) != 4 or parts[0] != self.prefix or parts[1] != "s":
            return None
        return parts[2], parts[3]

    def interest(self, node: str) -> str:
        """Hash: "tenant:name" -> streams following it on that node."""
        return f"{self.prefix}:interest:{node}"

    def cache_entry(self, tenant: str, digest: str) -> str:
        return f"{self.prefix}:qc:{tenant}:{digest}"

    def cache_generation(self, tenant: str) -> str:
        """Raised to invalidate every cached answer of a tenant (late writes, purge)."""
        return f"{self.prefix}:qcgen:{tenant}"
