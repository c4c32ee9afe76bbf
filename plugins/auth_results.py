"""The Authentication-Results header (RFC 8601), added once, from the mail-auth notes.

At ``data_post`` with priority 10, after ``spf`` (MAIL), ``dkim_verify``, ``arc`` (priority
0) and ``dmarc`` (5) have left their notes, one header is added::

    Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=example.net;
        dkim=pass header.d=example.net header.s=s1 header.b="abcdEFGH"; dmarc=pass
        header.from=example.net; arc=none

(unfolded on one line). Each method's result comes from its note; a method that left no note
is omitted, and with none at all the header says ``none`` (§2.2). Received headers that claim
our authserv-id are forged (§5): when there are any, every received Authentication-Results is
dropped and the others are put back, unfolded, so only the forged ones disappear.

Config (``conf/plugins/auth_results.toml``): ``authserv_id`` (default: the server's
hostname).
"""

from __future__ import annotations

import re

from trio_mta import hooks

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~@]+")


def pvalue(text: str) -> str:
    """``text`` as an RFC 8601 value: a token when possible, else a quoted-string."""
    if _TOKEN.fullmatch(text) and text.count("@") <= 1:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authserv_id_of(value: str) -> str:
    head = value.split(";", 1)[0].strip()
    return head.split()[0].lower() if head else ""


def methods(conn: hooks.Connection, txn: hooks.Transaction) -> list[str]:
    out: list[str] = []
    if conn.auth_user:
        out.append(f"auth=pass smtp.auth={pvalue(conn.auth_user)}")
    helo = conn.notes.get("spf_helo")
    spf = txn.notes.get("spf")
    if isinstance(spf, dict):
        out.append(f"spf={spf['result']} smtp.mailfrom={pvalue(str(spf['domain']))}")
    elif isinstance(helo, dict):
        out.append(f"spf={helo['result']} smtp.helo={pvalue(str(helo['domain']))}")
    dkim = txn.notes.get("dkim")
    if isinstance(dkim, list):
        for note in dkim:
            if not isinstance(note, dict):
                continue
            text = f"dkim={note['result']}"
            if note.get("reason") and note["result"] != "pass":
                text += f" reason={pvalue(str(note['reason'])[:80])}"
            text += f" header.d={pvalue(str(note['domain']) or 'unknown')}"
            if note.get("selector"):
                text += f" header.s={pvalue(str(note['selector']))}"
            if note.get("b"):
                text += f" header.b={pvalue(str(note['b']))}"
            out.append(text)
    dmarc = txn.notes.get("dmarc")
    if isinstance(dmarc, dict) and "result" in dmarc:
        text = f"dmarc={dmarc['result']}"
        if "policy" in dmarc:
            text += f" policy.dmarc={dmarc['policy']}"
        out.append(text + f" header.from={pvalue(str(dmarc['header_from']))}")
    arc = txn.notes.get("arc")
    if isinstance(arc, dict) and "result" in arc:
        out.append(f"arc={arc['result']}")
    return out


class Plugin(hooks.Plugin):
    priority = 10

    def setup(self) -> None:
        unknown = set(self.config) - {"authserv_id"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        authserv_id = self.config.get("authserv_id", self.env.hostname)
        if not isinstance(authserv_id, str) or not _TOKEN.fullmatch(authserv_id):
            raise ValueError("authserv_id: must be a host name")
        self.authserv_id = authserv_id

    async def hook_data_post(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        if txn is None or txn.message is None:
            return hooks.CONT
        received = [str(v) for v in txn.message.headers.get_all("Authentication-Results") or []]
        ours = self.authserv_id.lower()
        forged = [v for v in received if authserv_id_of(v) == ours]
        if forged:
            self.log.info("conn=%s removed %d forged Authentication-Results", conn.id, len(forged))
            txn.remove_header("Authentication-Results")
            for value in received:
                if authserv_id_of(value) != ours:
                    unfolded = re.sub(r"\r?\n[ \t]*", " ", value).strip()
                    txn.add_header("Authentication-Results", unfolded)
        results = methods(conn, txn) or ["none"]
        header = f"{self.authserv_id}; " + "; ".join(results)
        txn.add_header("Authentication-Results", header)
        txn.notes["authentication_results"] = header
        return hooks.CONT
