"""The XMPP pieces without a server: SCRAM against RFC 5802's example, the Annex K
stanza and allowed-JID rule, and how the CPE's answers become wake() outcomes."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.xish import domish

from cwmpgw.connreq.xmpp import XmppConnectionRequester
from cwmpgw.xmpp.annexk import (
    NS_CONNREQ,
    connection_request,
    jid_allowed,
    parse_connection_request,
)
from cwmpgw.xmpp.client import NotConnected, StanzaError
from cwmpgw.xmpp.scram import Scram, ScramError


class ScramTests(SynchronousTestCase):
    def test_rfc5802_example(self) -> None:
        scram = Scram("SCRAM-SHA-1", "user", "pencil", nonce="fyko+d2lbbFgONRv9qkxdawL")
        self.assertEqual(scram.getInitialResponse(), b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
        final = scram.getResponse(
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        )
        self.assertEqual(
            final,
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        )
        scram.verify_success(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
        self.assertRaises(ScramError, scram.verify_success, b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAA=")

    def test_a_server_that_does_not_extend_our_nonce_is_refused(self) -> None:
        scram = Scram("SCRAM-SHA-256", "user", "pencil", nonce="abc")
        self.assertRaises(ScramError, scram.getResponse, b"r=xyz,s=QSXCR+Q6sek8bf92,i=4096")
        self.assertRaises(ScramError, scram.getResponse, b"r=abc,s=QSXCR+Q6sek8bf92,i=4096")
        self.assertRaises(ScramError, scram.verify_success, b"v=AAAA")


class AnnexKTests(SynchronousTestCase):
    def test_the_stanza_round_trips(self) -> None:
        element = connection_request("cr-user", "p<&>w")
        self.assertEqual((element.uri, element.name), (NS_CONNREQ, "connectionRequest"))
        self.assertIn("p&lt;&amp;&gt;w", element.toXml())
        self.assertEqual(parse_connection_request(element), ("cr-user", "p<&>w"))
        other = domish.Element((NS_CONNREQ, "connectionRequest"))
        other.addElement("username", content="x")
        self.assertIsNone(parse_connection_request(other))  # no password

    def test_allowed_jids(self) -> None:
        self.assertTrue(jid_allowed("acs@example.net/gw", ""))
        self.assertTrue(jid_allowed("acs@example.net/gw", "acs@example.net"))
        self.assertTrue(jid_allowed("ACS@example.net/gw", "other@x, acs@example.net/gw"))
        self.assertFalse(jid_allowed("acs@example.net/other", "acs@example.net/gw"))
        self.assertFalse(jid_allowed("evil@example.net/gw", "acs@example.net"))
        self.assertFalse(jid_allowed(None, "acs@example.net"))


class _Client:
    def __init__(self, answer: Deferred[Any], ready: bool = True) -> None:
        self.answer = answer
        self.is_ready = ready
        self.sent: list[tuple[str, domish.Element]] = []

    def when_ready(self, timeout: float) -> Deferred[bool]:
        return succeed(self.is_ready)

    def send_iq(self, to: str, payload: domish.Element, timeout: float) -> Deferred[Any]:
        self.sent.append((to, payload))
        return self.answer


class RequesterTests(SynchronousTestCase):
    def outcome(self, answer: Deferred[Any], ready: bool = True) -> tuple[str, str]:
        client = _Client(answer, ready)
        requester = XmppConnectionRequester(
            client, own_jid="acs@example.net/gw", timeout=5, connect_wait=1
        )
        result = self.successResultOf(requester.request("cpe@example.net/cwmp", "u", "p"))
        return result.outcome, result.detail

    def test_answers_become_outcomes(self) -> None:
        self.assertEqual(self.outcome(succeed(object()))[0], "ok")
        self.assertEqual(
            self.outcome(fail(StanzaError("not-authorized", "auth")))[0], "auth_failed"
        )
        outcome, detail = self.outcome(fail(StanzaError("service-unavailable", "cancel")))
        self.assertEqual(outcome, "unreachable")
        self.assertIn("ConnReqAllowedJabberIDs", detail)
        self.assertEqual(self.outcome(fail(StanzaError("resource-constraint")))[0], "busy")
        self.assertEqual(self.outcome(fail(StanzaError("bad-request")))[0], "error")
        self.assertEqual(self.outcome(fail(NotConnected()))[0], "unreachable")
        clock = Clock()
        pending: Deferred[Any] = Deferred()
        pending.addTimeout(5, clock)
        clock.advance(5)
        self.assertEqual(self.outcome(pending)[0], "timeout")
        self.assertEqual(self.outcome(succeed(None), ready=False)[0], "unreachable")

    def test_credentials_go_only_to_allowed_domains(self) -> None:
        requester = XmppConnectionRequester(
            _Client(succeed(None)), own_jid="acs@example.net", timeout=5, connect_wait=1
        )
        self.assertIsNone(requester.check_target("cpe@example.net/cwmp"))
        self.assertIn("allowed_domains", requester.check_target("cpe@evil.example/cwmp") or "")
        self.assertIsNotNone(requester.check_target("example.net"))
        wider = XmppConnectionRequester(
            _Client(succeed(None)),
            own_jid="acs@example.net",
            timeout=5,
            connect_wait=1,
            allowed_domains=("cpes.example.org",),
        )
        self.assertIsNone(wider.check_target("cpe@cpes.example.org/cwmp"))
