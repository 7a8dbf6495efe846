"""C-ECHO as a requestor: is a destination (or this node) reachable and willing?"""

from __future__ import annotations

from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from marrownode.net.pynetdicom_adapter import scu_ae


def echo(host: str, port: int, called_aet: str, calling_aet: str, timeout: float = 10.0) -> int:
    """Return the C-ECHO status (0 = success) or raise ConnectionError when no association."""
    ae = scu_ae(calling_aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    association = ae.associate(host, port, ae_title=called_aet)
    if not association.is_established:
        raise ConnectionError(f"no association with {called_aet}@{host}:{port}")
    try:
        status = association.send_c_echo()
        return int(status.Status) if status else 0xFFFF
    finally:
        association.release()
