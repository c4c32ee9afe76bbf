"""Event rates per key (client address, account) for the ``limit`` plugin.

Each key is a leaky bucket that holds at most ``limit`` events and drains ``limit`` per
``window`` seconds: a client may send a burst of ``limit`` and then keeps ``limit`` per
window, which is what "N per minute" means to an operator, without the fixed-window edge
where 2N pass in a moment around a window boundary. A refused event is not counted, so a
client that keeps hammering still gets the sustained rate and no more.

Memory is the attack surface: a flood from many addresses must not grow the table without
bound. A bucket untouched for a whole window is empty (it never holds more than ``limit``), so
it is dropped; keys are kept in order of last use, which makes that sweep O(1) amortised. On
top of that the table holds at most ``max_keys`` buckets and forgets the least recently used
one past it: a flood can make us forget a client's count, never run out of memory.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

# A bucket: [level, time of last update].
_Bucket = list[float]


class RateTable:
    def __init__(self, limit: int, window: float, *, max_keys: int = 100_000) -> None:
        if limit < 1 or window <= 0 or max_keys < 1:
            raise ValueError("limit and max_keys must be at least 1, window positive")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._drain = limit / window  # events per second
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def hit(self, key: str, now: float) -> bool:
        """Count one event for ``key`` at ``now`` if it is within the rate; False (and not
        counted) if it is not. ``now`` must not go backwards (a monotonic clock)."""
        self._forget_idle(now)
        bucket = self._buckets.pop(key, None)
        level = 0.0 if bucket is None else max(0.0, bucket[0] - (now - bucket[1]) * self._drain)
        allowed = level + 1 <= self.limit
        if allowed:
            level += 1
        self._buckets[key] = [level, now]
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may have one more event (0 if it may now)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        level = max(0.0, bucket[0] - (now - bucket[1]) * self._drain)
        return max(0.0, (level + 1 - self.limit) / self._drain)

    def _forget_idle(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            key, (_, last) = next(iter(buckets.items()))
            if now - last < self.window:
                return
            del buckets[key]


def client_key(ip: str, ipv6_prefix: int) -> str:
    """The key a client address is counted under: the address itself for IPv4, its
    ``/ipv6_prefix`` network for IPv6 (one host usually holds a whole /64, so counting single
    IPv6 addresses would let it pick a fresh one per connection). IPv4-mapped addresses count
    as the IPv4 address. Anything else that is not an address is counted as it is."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)
