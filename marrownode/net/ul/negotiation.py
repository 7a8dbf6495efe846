"""Presentation-context negotiation for the receiving side: every storage SOP class and
Verification, with the transfer syntaxes the node accepts, in order of preference."""

from __future__ import annotations

from pydicom import uid as pd_uid
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from marrownode.net.ul import pdu

#: Every transfer syntax a scanner or PACS commonly sends, in order of preference: the first of
#: ours that the requestor proposes is accepted, so lossless compressed data is kept as sent,
#: and lossy syntaxes are accepted only when nothing lossless was offered.
ACCEPTED_TRANSFER_SYNTAXES: list[str] = [
    pd_uid.RLELossless,
    pd_uid.JPEGLSLossless,
    pd_uid.JPEGLosslessSV1,
    pd_uid.JPEGLossless,
    pd_uid.JPEG2000Lossless,
    pd_uid.HTJ2KLossless,
    pd_uid.HTJ2KLosslessRPCL,
    pd_uid.ExplicitVRLittleEndian,
    pd_uid.ImplicitVRLittleEndian,
    pd_uid.DeflatedExplicitVRLittleEndian,
    pd_uid.ExplicitVRBigEndian,
    pd_uid.JPEGBaseline8Bit,
    pd_uid.JPEGExtended12Bit,
    pd_uid.JPEGLSNearLossless,
    pd_uid.JPEG2000,
    pd_uid.HTJ2K,
]
#: Verification carries no data set: any uncompressed syntax will do.
VERIFICATION_TRANSFER_SYNTAXES: list[str] = [
    pd_uid.ImplicitVRLittleEndian, pd_uid.ExplicitVRLittleEndian, pd_uid.ExplicitVRBigEndian,
    pd_uid.DeflatedExplicitVRLittleEndian]
#: Abstract syntax -> the transfer syntaxes accepted for it, in order of preference.
SUPPORTED_CONTEXTS: dict[str, list[str]] = {
    **{str(c.abstract_syntax): ACCEPTED_TRANSFER_SYNTAXES for c in AllStoragePresentationContexts},
    str(Verification): VERIFICATION_TRANSFER_SYNTAXES,
}


def negotiate(
    context: pdu.ProposedContext,
    supported: dict[str, list[str]] = SUPPORTED_CONTEXTS,
) -> pdu.ContextResult:
    """Accept a supported context with the first of our transfer syntaxes the requestor
    proposes; otherwise say why not (PS3.8 table 9-18)."""
    ours = supported.get(context.abstract_syntax)
    if ours is None:
        return pdu.ContextResult(context.context_id, pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED,
                                 pd_uid.ImplicitVRLittleEndian)
    for syntax in ours:
        if syntax in context.transfer_syntaxes:
            return pdu.ContextResult(context.context_id, pdu.ACCEPTANCE, syntax)
    return pdu.ContextResult(context.context_id, pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED,
                             pd_uid.ImplicitVRLittleEndian)
