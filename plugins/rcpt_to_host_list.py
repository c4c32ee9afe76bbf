"""Accept recipients in the local domains (Haraka's rcpt_to.in_host_list).

Config (``conf/plugins/rcpt_to_host_list.toml``): ``host_list`` (domains; default: the server's
``local_domains``), ``host_list_regex`` (full-match patterns) and ``allow_routing_characters``
(default false). ``<postmaster>`` without a domain is always accepted (RFC 5321 §4.5.1).
Anything else gets no opinion (CONT): the server then refuses it unless the client may relay.

Open-relay defence: a local recipient whose local part (unquoted) contains ``%``, ``!`` or
``@`` is refused with 550 5.7.1, whoever the client is: ``user%other@local`` (the "percent
hack"), ``other!user@local`` (UUCP bang path) and ``"user@other"@local`` are old ways of asking
the receiving host to forward, which an operator never wants to honour by accident (RFC 5321
§3.6.1 would even allow delivering them as literally-named local mailboxes; nobody has such
mailboxes). ``allow_routing_characters = true`` accepts them as local mailboxes of that name;
nothing here ever forwards them. Source routes (``<@local:user@other>``) need nothing: the
protocol layer strips the route, and the mailbox, ``user@other``, is judged like any other.
"""

from __future__ import annotations

import re

from trio_mta import hooks
from trio_mta.protocol import Address, RcptParams

_ROUTING = "%!@"
ROUTING_REFUSED = "Relaying denied: routing characters (% ! @) in the local part"


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        domains = self.config.get("host_list", list(self.env.local_domains))
        patterns = self.config.get("host_list_regex", [])
        if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
            raise ValueError("host_list must be a list of domain names")
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ValueError("host_list_regex must be a list of regular expressions")
        routing = self.config.get("allow_routing_characters", False)
        if not isinstance(routing, bool):
            raise ValueError("allow_routing_characters must be true or false")
        self.allow_routing = routing
        self.domains = frozenset(d.lower().rstrip(".") for d in domains)
        self.patterns = [re.compile(p, re.IGNORECASE) for p in patterns]

    def is_local(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return domain in self.domains or any(p.fullmatch(domain) for p in self.patterns)

    async def hook_rcpt(
        self, conn: hooks.Connection, rcpt: Address, params: RcptParams
    ) -> hooks.Result:
        if rcpt.is_postmaster:
            return hooks.OK
        if rcpt.is_address_literal or not self.is_local(rcpt.domain):
            return hooks.CONT
        if not self.allow_routing and any(c in rcpt.unquoted_local_part for c in _ROUTING):
            return hooks.deny(ROUTING_REFUSED, code=550, enhanced="5.7.1")
        return hooks.OK
