"""The reference server: aiosmtpd's own SMTP protocol with its ``Sink`` handler (accept and
discard), on the default asyncio event loop, as ``python -m aiosmtpd -c aiosmtpd.handlers.Sink``
runs it, with two differences that keep the comparison about the SMTP engine: a fixed hostname
(aiosmtpd otherwise calls ``socket.getfqdn()`` for every connection) and a listen backlog of 4096
like trio-mta's (asyncio's default of 100 drops SYNs under 500 concurrent connects).

Prints ``aiosmtpd ready HOST:PORT`` on stdout once listening; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = Sink()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="aiosmtpd.bench"), host, port, backlog=4096
    )
    bound = server.sockets[0].getsockname()
    print(f"aiosmtpd ready {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    args = parser.parse_args()
    host, _, port = str(args.listen).rpartition(":")
    # As aiosmtpd's command line does without -d.
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(serve(host, int(port)))


if __name__ == "__main__":
    main()
