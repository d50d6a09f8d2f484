"""The application: the gateway's service tree and the ``make_*`` functions that build it.

This is the only package that builds concrete parts and wires them (the composition
root, :mod:`cwmpgw.service`, calls it). Nothing else imports it.
"""
