"""XMPP for Annex K connection requests: a persistent client (STARTTLS required, SASL
SCRAM or PLAIN over TLS, reconnect with back-off) and the connectionRequest stanza.

Shared by the gateway's connection-request client and the simulator's CPEs; imports
nothing else of ours.
"""
