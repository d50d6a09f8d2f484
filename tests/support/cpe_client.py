"""A CPE written outside the codebase: http.client + ssl + hashlib, nothing from cwmpgw.

It runs one CWMP session the way a router does: Inform (answering the Digest challenge),
optional CPE requests, the empty POST, until the ACS answers 204. Run it by hand too:

    python tests/support/cpe_client.py https://127.0.0.1:7547/ USERNAME PASSWORD
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

INFORM = """<?xml version="1.0" encoding="UTF-8"?>
<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:soap-enc="http://schemas.xmlsoap.org/soap/encoding/"
    xmlns:xsd="http://www.w3.org/2001/XMLSchema"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xmlns:cwmp="urn:dslforum-org:cwmp-1-2">
  <soap-env:Header><cwmp:ID soap-env:mustUnderstand="1">1001</cwmp:ID></soap-env:Header>
  <soap-env:Body>
    <cwmp:Inform>
      <DeviceId><Manufacturer>TP-Link</Manufacturer><OUI>9CA2F4</OUI>
        <ProductClass>EC220_G5_V3</ProductClass><SerialNumber>{serial}</SerialNumber></DeviceId>
      <Event soap-enc:arrayType="cwmp:EventStruct[1]">
        <EventStruct><EventCode>{event}</EventCode><CommandKey></CommandKey></EventStruct>
      </Event>
      <MaxEnvelopes>1</MaxEnvelopes><CurrentTime>2025-05-25T22:24:29Z</CurrentTime>
      <RetryCount>0</RetryCount>
      <ParameterList soap-enc:arrayType="cwmp:ParameterValueStruct[2]">
        <ParameterValueStruct><Name>Device.DeviceInfo.SoftwareVersion</Name>
          <Value xsi:type="xsd:string">1.0.4 Build 220623</Value></ParameterValueStruct>
        <ParameterValueStruct><Name>Device.ManagementServer.ConnectionRequestURL</Name>
          <Value xsi:type="xsd:string">{cr_url}</Value></ParameterValueStruct>
      </ParameterList>
    </cwmp:Inform>
  </soap-env:Body>
</soap-env:Envelope>"""

TRANSFER_COMPLETE = """<?xml version="1.0" encoding="UTF-8"?>
<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:cwmp="urn:dslforum-org:cwmp-1-2">
  <soap-env:Header><cwmp:ID soap-env:mustUnderstand="1">1002</cwmp:ID></soap-env:Header>
  <soap-env:Body><cwmp:TransferComplete><CommandKey>fw-42</CommandKey>
    <FaultStruct><FaultCode>0</FaultCode><FaultString></FaultString></FaultStruct>
    <StartTime>2025-05-25T22:30:01Z</StartTime><CompleteTime>2025-05-25T22:31:47Z</CompleteTime>
  </cwmp:TransferComplete></soap-env:Body>
</soap-env:Envelope>"""


@dataclass
class Exchange:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    challenges: list[str] = field(default_factory=list)


def _digest(challenge: str, user: str, password: str, uri: str, nc: int) -> str:
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    algorithm = params.get("algorithm", "MD5")
    h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]

    def hx(s: str) -> str:
        return h(s.encode()).hexdigest()

    cnonce, ncs = os.urandom(8).hex(), f"{nc:08x}"
    ha1, ha2 = hx(f"{user}:{params['realm']}:{password}"), hx(f"POST:{uri}")
    response = hx(f"{ha1}:{params['nonce']}:{ncs}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
        f'uri="{uri}", algorithm={algorithm}, qop=auth, nc={ncs}, cnonce="{cnonce}", '
        f'response="{response}", opaque="{params.get("opaque", "")}"'
    )


def run_session(
    url: str,
    user: str,
    password: str,
    *,
    serial: str = "22275K2000315",
    event: str = "1 BOOT",
    transfer_complete: bool | Sequence[str] = False,
    reports: Sequence[str] = (),
    cafile: str | None = None,
    algorithm: str = "MD5",
    cr_url: str = "http://127.0.0.1:7548/cr",
    certfile: str | None = None,
    keyfile: str | None = None,
    source_address: str | None = None,
    answer: Callable[[bytes], str | None] | None = None,
) -> list[Exchange]:
    """One session; returns every HTTP exchange after the 401 round trip.

    ``answer`` is the CPE's side of the ACS's turn: given the ACS's request envelope it
    returns the response envelope to POST (None: post empty, as a CPE with nothing to say).
    ``reports`` are more CPE requests (e.g. a DUStateChangeComplete) sent after the
    TransferCompletes, each expecting a 200.
    """
    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    conn = http.client.HTTPSConnection(
        parts.hostname,
        parts.port,
        context=context,
        timeout=10,
        source_address=(source_address, 0) if source_address else None,
    )
    uri, cookie, authorization, nc = parts.path or "/", "", "", 0
    exchanges: list[Exchange] = []

    def post(body: str) -> Exchange:
        nonlocal cookie
        headers = {"Content-Type": 'text/xml; charset="utf-8"', "SOAPAction": ""} if body else {}
        if cookie:
            headers["Cookie"] = cookie
        if authorization:
            headers["Authorization"] = authorization
        conn.request("POST", uri, body=body.encode(), headers=headers)
        r = conn.getresponse()
        data = r.read()
        if r.getheader("Set-Cookie"):
            cookie = r.getheader("Set-Cookie", "").split(";")[0]
        challenges = [v for k, v in r.getheaders() if k.lower() == "www-authenticate"]
        return Exchange(r.status, data, {k.lower(): v for k, v in r.getheaders()}, challenges)

    inform = INFORM.format(serial=serial, event=event, cr_url=cr_url)
    try:
        first = post(inform)
        if first.status == 401:
            pick = next(c for c in first.challenges if f"algorithm={algorithm}" in c)
            nc += 1
            authorization = _digest(pick, user, password, uri, nc)
            first = post(inform)
        exchanges.append(first)
        if first.status != 200:
            return exchanges
        keys = ["fw-42"] if transfer_complete is True else list(transfer_complete or [])
        for key in keys:
            exchanges.append(post(TRANSFER_COMPLETE.replace("fw-42", key)))
        for report in reports:
            exchanges.append(post(report))
        r = post("")
        exchanges.append(r)
        while r.status == 200 and answer is not None:
            reply = answer(r.body)
            r = post(reply or "")
            exchanges.append(r)
        return exchanges
    finally:
        conn.close()  # also when the CPE "loses power" (an answer callback raising)


if __name__ == "__main__":
    for exchange in run_session(
        sys.argv[1], sys.argv[2], sys.argv[3], cafile=os.environ.get("CAFILE")
    ):
        print(exchange.status, exchange.body[:200].decode(errors="replace"))
