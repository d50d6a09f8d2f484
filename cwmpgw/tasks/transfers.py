"""The seam through which the file server completes transfer tasks for their device.

A Download naming a gateway ``file``, or an Upload without a ``url``, is completed when
it is sent, not when it is queued: the URL and credentials are signed for the device the
session belongs to, and expire; nothing secret is ever stored in the task.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

from cwmpgw.tasks.model import Task

__all__ = ["ITransferLinks", "LinkError"]


class LinkError(Exception):
    """The task cannot be completed (e.g. its file was deleted); the message says why."""


class ITransferLinks(Interface):
    def resolve(task: Task) -> Deferred[dict[str, Any]]:
        """The task's arguments with ``url``, ``username``, ``password`` (and for a file,
        ``file_size`` and ``target_file_name`` unless given) filled in for its device;
        errbacks with :class:`LinkError` when that cannot be done."""
