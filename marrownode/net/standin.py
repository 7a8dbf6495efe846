"""A minimal storage SCP that stands in for a PACS: the demo's destination, and a PACS that
refuses some SOP classes for tests. It keeps what it receives as files in a folder."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from marrownode.net.ul.negotiation import ACCEPTED_TRANSFER_SYNTAXES
from marrownode.uids import safe_component


class StandInPACS:
    def __init__(self, folder: Path, ae_title: str = "STANDIN", host: str = "127.0.0.1",
                 port: int = 0, refuse_sop_classes: Iterable[str] = ()) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.received: list[str] = []
        self._lock = threading.Lock()
        refused = set(refuse_sop_classes)
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(str(Verification))
        for context in AllStoragePresentationContexts:
            abstract_syntax = str(context.abstract_syntax)
            if abstract_syntax not in refused:
                self.ae.add_supported_context(abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> StandInPACS:
        self.folder.mkdir(parents=True, exist_ok=True)
        server = self.ae.start_server((self.host, self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        assert server is not None  # block=False returns the running server
        if server.socket is not None:
            server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = int(server.server_address[1])
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _store(self, event: evt.Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE)
        sop_uid = str(request.AffectedSOPInstanceUID)
        # Written aside and renamed: whoever reads the folder never meets half a file.
        target = self.folder / f"{safe_component(sop_uid)}.dcm"
        partial = target.with_suffix(".partial")
        partial.write_bytes(event.encoded_dataset())
        os.replace(partial, target)
        with self._lock:
            self.received.append(sop_uid)
        return 0x0000
