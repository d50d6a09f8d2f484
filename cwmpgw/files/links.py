"""Transfer tasks completed for their device: the URL and credentials of a grant."""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from cwmpgw.files.model import UploadSlot
from cwmpgw.files.signing import Grant, LinkSigner
from cwmpgw.files.store import FileStore
from cwmpgw.tasks.model import Task
from cwmpgw.tasks.transfers import ITransferLinks, LinkError

__all__ = ["TransferLinks", "file_path", "upload_path"]

_MAX_URL: Final = 256  # the URL argument of Download/Upload (TR-069 A.3.2.8)
_MAX_USERNAME: Final = 256


def file_path(file_id: str, name: str = "") -> str:
    return f"/f/{file_id}" + (f"/{quote(name, safe='')}" if name else "")


def upload_path(task_id: str) -> str:
    return f"/u/{quote(task_id, safe='')}"


@implementer(ITransferLinks)
class TransferLinks:
    """Completes Download (``file``) and Upload (no ``url``) tasks for their device.

    ``style`` "signed" puts the grant in the URL (and the credentials in the RPC);
    "short" gives only ``/f/<id>`` and the credentials, for CPEs that cannot take long
    URLs. A signed URL that would pass the 256 characters the RPC allows is made short.
    """

    def __init__(
        self,
        store: FileStore,
        *,
        base_url: str,
        lifetime: float,
        style: str,
        clock: IReactorTime,
    ) -> None:
        self.signer: LinkSigner | None = None  # set when the file part has the shared key
        self._store = store
        self.base_url = base_url
        self._lifetime = lifetime
        self._style = style
        self._clock = clock

    def resolve(self, task: Task) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._resolve(task))

    def grant_url(self, grant: Grant, path: str, short_path: str) -> str:
        assert self.signer is not None
        url = f"{self.base_url.rstrip('/')}{path}?{self.signer.query(grant)}"
        if self._style == "signed" and len(url) <= _MAX_URL:
            return url
        url = self.base_url.rstrip("/") + short_path
        if len(url) > _MAX_URL:
            raise LinkError("files.public_url is too long for a transfer URL")
        return url

    async def _resolve(self, task: Task) -> dict[str, Any]:
        if self.signer is None:
            raise LinkError("the file server is not ready")
        if len(task.device_id) > _MAX_USERNAME:
            raise LinkError("the device id is too long to be a transfer username")
        args = dict(task.args)
        expires = int(self._clock.seconds() + self._lifetime)
        if task.type == "Upload":
            grant = Grant("put", task.id, task.device_id, expires)
            await self._store.index.add_slot(
                UploadSlot(task.id, task.device_id, str(args["file_type"]), float(expires))
            )
            args["url"] = self.grant_url(grant, upload_path(task.id), upload_path(task.id))
        else:
            file_id = str(args.pop("file"))
            info = await self._store.get(file_id)
            if info is None:
                raise LinkError(f"file {file_id} does not exist (deleted?)")
            grant = Grant("get", file_id, task.device_id, expires)
            args["url"] = self.grant_url(grant, file_path(file_id, info.name), file_path(file_id))
            if not args.get("file_size"):
                args["file_size"] = info.size
            if not args.get("target_file_name"):
                args["target_file_name"] = info.name
        args["username"] = task.device_id
        args["password"] = self.signer.password(grant)
        return args
