"""The stack's own limit: a bare Twisted TLS server answering a CWMP session with canned bytes.

Same certificate kind as the gateway's default (ECDSA P-256), same exchanges (Digest 401,
InformResponse, one GetParameterValues, 204), no parsing, no Redis, no state. The
``sessions`` bench runs the same simulated CPEs against it and against the gateway, so the
gateway's figure reads as a fraction of what Twisted + pyOpenSSL can do on this machine.

    python bench/baseline_server.py PORT CERT KEY
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Site

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

from cwmpgw.acs.tls import server_options
from cwmpgw.cwmp import soap

NS = "urn:dslforum-org:cwmp-1-2"
CHALLENGE = b'Digest realm="cwmpgw", qop="auth", algorithm=MD5, nonce="0123456789abcdef0123456789abcdef", opaque="00"'
INFORM_RESPONSE = soap.inform_response(NS, "1")
GPV = soap.get_parameter_values(NS, "acs-1", ["Device.DeviceInfo.SoftwareVersion"])


class Canned(Resource):
    isLeaf = True

    def render_POST(self, request):  # type: ignore[no-untyped-def]
        body = request.content.read()
        if not body:
            request.setHeader(b"content-type", b'text/xml; charset="utf-8"')
            return GPV
        if b"InformResponse" in body or b":Inform>" in body or b":Inform " in body:
            if request.getHeader(b"authorization") is None:
                request.setResponseCode(401)
                request.setHeader(b"www-authenticate", CHALLENGE)
                return b""
            request.setHeader(b"content-type", b'text/xml; charset="utf-8"')
            request.setHeader(b"set-cookie", b"s=1")
            return INFORM_RESPONSE
        request.setResponseCode(204)
        return b""


if __name__ == "__main__":
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    site = Site(Canned())
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    SSL4ServerEndpoint(reactor, port, server_options(cert, key), interface="127.0.0.1").listen(site)
    print("listening", flush=True)
    reactor.run()
