"""Accept recipients in the local domains (Haraka's rcpt_to.in_host_list).

Config (``conf/plugins/rcpt_to_host_list.toml``): ``host_list`` (domains; default: the server's
``local_domains``) and ``host_list_regex`` (full-match patterns). ``<postmaster>`` without a
domain is always accepted (RFC 5321 §4.5.1). Anything else gets no opinion (CONT): the server
then refuses it unless the client may relay.
"""

from __future__ import annotations

import re

from trio_mta import hooks
from trio_mta.protocol import Address, RcptParams


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        domains = self.config.get("host_list", list(self.env.local_domains))
        patterns = self.config.get("host_list_regex", [])
        if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
            raise ValueError("host_list must be a list of domain names")
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ValueError("host_list_regex must be a list of regular expressions")
        self.domains = frozenset(d.lower().rstrip(".") for d in domains)
        self.patterns = [re.compile(p, re.IGNORECASE) for p in patterns]

    def is_local(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return domain in self.domains or any(p.fullmatch(domain) for p in self.patterns)

    async def hook_rcpt(
        self, conn: hooks.Connection, rcpt: Address, params: RcptParams
    ) -> hooks.Result:
        if rcpt.is_postmaster or (not rcpt.is_address_literal and self.is_local(rcpt.domain)):
            return hooks.OK
        return hooks.CONT
