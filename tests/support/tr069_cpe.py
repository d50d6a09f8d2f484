"""A CPE's side of authentication, written from the TR-069 text, with nothing from cwmpgw.

http.client, ssl and hashlib only. What TR-069 Amendment 6 asks of a CPE (§3.4.2,
§3.4.4, §3.4.5) and RFC 7616 of a Digest client, and this CPE does:

- over TLS it SHOULD send Basic credentials pre-emptively, without waiting for a
  challenge (``preemptive_basic``);
- it MUST support Digest with qop="auth" and MD5; after a challenge it sends the next
  request, with ``Authorization``, on the same connection, unless the challenge carried
  ``Connection: close``, in which case it reconnects;
- once challenged it SHOULD send ``Authorization`` on every later request. Some CPEs
  carry that over to their next session: the first request of a new connection answers
  the previous session's nonce, with the nonce count started again at 1
  (``reuse_nonce``);
- a challenge with ``stale=true`` means "your password was right, your nonce was
  not": answer again with the new nonce (RFC 7616 §3.3), without giving up.

``session()`` runs one CWMP session (Inform, then the empty POST until 204) and returns
every HTTP exchange, the 401s included.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import ssl
import urllib.parse
from dataclasses import dataclass

INFORM = """<?xml version="1.0" encoding="UTF-8"?>
<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:soap-enc="http://schemas.xmlsoap.org/soap/encoding/"
    xmlns:xsd="http://www.w3.org/2001/XMLSchema"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xmlns:cwmp="urn:dslforum-org:cwmp-1-2">
  <soap-env:Header><cwmp:ID soap-env:mustUnderstand="1">1</cwmp:ID></soap-env:Header>
  <soap-env:Body>
    <cwmp:Inform>
      <DeviceId><Manufacturer>TP-Link</Manufacturer><OUI>{oui}</OUI>
        <ProductClass>{product_class}</ProductClass><SerialNumber>{serial}</SerialNumber>
      </DeviceId>
      <Event soap-enc:arrayType="cwmp:EventStruct[1]">
        <EventStruct><EventCode>2 PERIODIC</EventCode><CommandKey></CommandKey></EventStruct>
      </Event>
      <MaxEnvelopes>1</MaxEnvelopes><CurrentTime>2025-05-25T22:24:29Z</CurrentTime>
      <RetryCount>0</RetryCount>
      <ParameterList soap-enc:arrayType="cwmp:ParameterValueStruct[1]">
        <ParameterValueStruct><Name>Device.ManagementServer.ConnectionRequestURL</Name>
          <Value xsi:type="xsd:string">http://127.0.0.1:7548/cr</Value></ParameterValueStruct>
      </ParameterList>
    </cwmp:Inform>
  </soap-env:Body>
</soap-env:Envelope>"""


@dataclass
class Exchange:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def challenges(self) -> list[str]:
        return self.headers.get("www-authenticate", [])


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """(scheme, parameters) of one WWW-Authenticate value; names lowercased."""
    scheme, _, rest = value.strip().partition(" ")
    params = {
        k.lower(): quoted if quoted or bare == "" else bare
        for k, quoted, bare in re.findall(r'([A-Za-z0-9_-]+)=(?:"([^"]*)"|([^,\s]*))', rest)
    }
    return scheme.lower(), params


class Tr069Cpe:
    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        serial: str,
        oui: str = "9CA2F4",
        product_class: str = "EC220_G5_V3",
        cafile: str | None = None,
        source_address: str | None = None,
        preemptive_basic: bool = False,
        reuse_nonce: bool = False,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 443
        self.path = parts.path or "/"
        self.username, self.password = username, password
        self.inform = INFORM.format(oui=oui, product_class=product_class, serial=serial)
        self.context = ssl.create_default_context(cafile=cafile)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.source_address = source_address
        self.preemptive_basic = preemptive_basic
        self.reuse_nonce = reuse_nonce
        self.digest: dict[str, str] | None = None  # the last Digest challenge answered
        self.nc = 0

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host,
            self.port,
            context=self.context,
            timeout=10,
            source_address=(self.source_address, 0) if self.source_address else None,
        )

    def _basic(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return "Basic " + token

    def _digest(self) -> str:
        """The next Authorization for the current Digest challenge (nc counts up)."""
        assert self.digest is not None
        self.nc += 1

        def md5(s: str) -> str:
            return hashlib.md5(s.encode(), usedforsecurity=False).hexdigest()

        c = self.digest
        nc, cnonce = f"{self.nc:08x}", os.urandom(8).hex()
        ha1 = md5(f"{self.username}:{c['realm']}:{self.password}")
        ha2 = md5(f"POST:{self.path}")
        response = md5(f"{ha1}:{c['nonce']}:{nc}:{cnonce}:auth:{ha2}")
        value = (
            f'Digest username="{self.username}", realm="{c["realm"]}", nonce="{c["nonce"]}", '
            f'uri="{self.path}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}", '
            f'response="{response}"'
        )
        if "opaque" in c:
            value += f', opaque="{c["opaque"]}"'
        return value

    def session(self) -> list[Exchange]:
        log: list[Exchange] = []
        conn = self._connect()
        cookie = ""

        def post(body: str, authorization: str | None) -> Exchange:
            nonlocal cookie
            headers = (
                {"Content-Type": 'text/xml; charset="utf-8"', "SOAPAction": ""} if body else {}
            )
            if cookie:
                headers["Cookie"] = cookie
            if authorization:
                headers["Authorization"] = authorization
            conn.request("POST", self.path, body=body.encode(), headers=headers)
            r = conn.getresponse()
            data = r.read()
            got: dict[str, list[str]] = {}
            for k, v in r.getheaders():
                got.setdefault(k.lower(), []).append(v)
            if "set-cookie" in got:
                cookie = got["set-cookie"][0].split(";")[0]
            exchange = Exchange(r.status, got, data)
            log.append(exchange)
            return exchange

        try:
            authorization: str | None = None
            if self.reuse_nonce and self.digest is not None:
                self.nc = 0  # a new session, the old nonce: counting starts again
                authorization = self._digest()
            elif self.preemptive_basic:
                authorization = self._basic()
            for _ in range(3):  # the first try, then at most two challenges
                r = post(self.inform, authorization)
                if r.status != 401:
                    break
                offered = [parse_challenge(v) for v in r.challenges]
                digest = next(
                    (
                        p
                        for s, p in offered
                        if s == "digest" and p.get("algorithm", "MD5").upper() == "MD5"
                    ),
                    None,
                )
                if digest is None:
                    break
                stale = digest.get("stale", "").lower() == "true"
                if authorization and authorization.startswith("Digest ") and not stale:
                    break  # our password is wrong: a real CPE retries much later
                self.digest, self.nc = digest, 0
                authorization = self._digest()
                if (r.header("connection") or "").lower() == "close":
                    conn.close()
                    conn = self._connect()
            if log[-1].status != 200:
                return log
            while True:
                r = post("", self._digest() if self.digest else None)
                if r.status != 200:
                    return log
        finally:
            conn.close()
