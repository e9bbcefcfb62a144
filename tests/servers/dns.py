"""A real DNS server on a free loopback port, for one test: A records the test sets and changes as it runs.

Built on dnspython's wire format (the same library the router resolves
with, but its server side here is only this file): UDP queries in, answers
out. A name with no records gets NXDOMAIN; `records[name]` is read at each
query, so a test adds or removes a replica by changing the list.
"""

from __future__ import annotations

import asyncio

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}  # "name." -> IPv4 addresses
        self.queries = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.port = self.transport.get_extra_info("sockname")[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.queries += 1
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text()
        addresses = self.records.get(name)
        if addresses is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text_list(name, 1, "IN", "A", addresses))
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
