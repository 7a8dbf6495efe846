"""The upper layer on bytes alone (net/ul): PDU fixtures written out field by field in the style
of pynetdicom's tests/encoded_pdu_items.py, round trips through an independent decoder
(pynetdicom's PDU classes), negotiation, command sets and the joining of PDV fragments."""

from __future__ import annotations

import struct

import pytest
from pynetdicom.pdu import A_ASSOCIATE_AC as PynetdicomAssociateAC
from pynetdicom.pdu import P_DATA_TF as PynetdicomPData

from marrownode.net.ul import dimse, pdu
from marrownode.net.ul.negotiation import negotiate
from marrownode.net.ul.status import Category, Status, category, describe, kept, may_pass

MR, VERIFICATION = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.1"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"

# A-ASSOCIATE-RQ, called MARROWNODE, calling SCANNER, protocol version 1:
#   context 1: MR Image Storage, Explicit VR LE then Implicit VR LE
#   context 3: Verification, Implicit VR LE
#   context 5: 1.2.3.4.99 (not a SOP class we know), Implicit VR LE
#   user information: max PDU 16384, implementation class 1.2.3.4.5, version SCANNER_1
ASSOCIATE_RQ = (
    bytes.fromhex("01 00 00000131")  # type 1, reserved, length 305
    + bytes.fromhex("0001 0000")  # protocol version 1, reserved
    + b"MARROWNODE      " + b"SCANNER         " + bytes(32)
    + bytes.fromhex("10 00 0015") + b"1.2.840.10008.3.1.1.1"
    + bytes.fromhex("20 00 004d 01 00 00 00")
    + bytes.fromhex("30 00 0019") + b"1.2.840.10008.5.1.4.1.1.4"
    + bytes.fromhex("40 00 0013") + b"1.2.840.10008.1.2.1"
    + bytes.fromhex("40 00 0011") + b"1.2.840.10008.1.2"
    + bytes.fromhex("20 00 002e 03 00 00 00")
    + bytes.fromhex("30 00 0011") + b"1.2.840.10008.1.1"
    + bytes.fromhex("40 00 0011") + b"1.2.840.10008.1.2"
    + bytes.fromhex("20 00 0027 05 00 00 00")
    + bytes.fromhex("30 00 000a") + b"1.2.3.4.99"
    + bytes.fromhex("40 00 0011") + b"1.2.840.10008.1.2"
    + bytes.fromhex("50 00 0022")
    + bytes.fromhex("51 00 0004 00004000")
    + bytes.fromhex("52 00 0009") + b"1.2.3.4.5"
    + bytes.fromhex("55 00 0009") + b"SCANNER_1"
)


def test_associate_rq_fixture_parses_to_its_fields() -> None:
    assert len(ASSOCIATE_RQ) == 6 + 305
    request = pdu.parse_associate_rq(ASSOCIATE_RQ[6:])
    assert (request.protocol_version, request.called_ae, request.calling_ae) == (
        1, "MARROWNODE", "SCANNER")
    assert request.application_context == pdu.APPLICATION_CONTEXT
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in request.contexts] == [
        (1, MR, (EXPLICIT, IMPLICIT)), (3, VERIFICATION, (IMPLICIT,)),
        (5, "1.2.3.4.99", (IMPLICIT,))]
    assert (request.max_pdu_length, request.implementation_class_uid,
            request.implementation_version) == (16384, "1.2.3.4.5", "SCANNER_1")


@pytest.mark.parametrize("body, detail", [
    (ASSOCIATE_RQ[6:70], "shorter than its header"),
    (ASSOCIATE_RQ[6:-3], "runs past"),
])
def test_truncated_associate_rq_is_a_protocol_error(body: bytes, detail: str) -> None:
    with pytest.raises(pdu.ProtocolError, match=detail):
        pdu.parse_associate_rq(body)


def test_associate_ac_reads_back_in_pynetdicom() -> None:
    """Our A-ASSOCIATE-AC, decoded by an independent implementation, answers each context."""
    request = pdu.parse_associate_rq(ASSOCIATE_RQ[6:])
    accept = pdu.AssociateAccept(request, tuple(negotiate(c) for c in request.contexts),
                                 32768, "1.2.3", "TEST")
    decoded = PynetdicomAssociateAC()
    decoded.decode(accept.encode())
    assert decoded.called_ae_title == "MARROWNODE" and decoded.calling_ae_title == "SCANNER"
    results = {item.context_id: (item.result, item.transfer_syntax)
               for item in decoded.presentation_context}
    assert results[1] == (pdu.ACCEPTANCE, EXPLICIT)
    assert results[3] == (pdu.ACCEPTANCE, IMPLICIT)
    assert results[5][0] == pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED
    assert accept.accepted == {1: (MR, EXPLICIT), 3: (VERIFICATION, IMPLICIT)}


@pytest.mark.parametrize("encoded, expected", [
    (pdu.associate_rj(1, 1, 7), "03 00 00000004 00 01 01 07"),
    (pdu.release_rp(), "06 00 00000004 0000 0000"),
    (pdu.abort(2, 6), "07 00 00000004 00 00 02 06"),
])
def test_fixed_size_pdus_encode_as_ps3_8_says(encoded: bytes, expected: str) -> None:
    assert encoded == bytes.fromhex(expected)


@pytest.mark.parametrize("syntaxes, abstract, result, chosen", [
    ((IMPLICIT, EXPLICIT), MR, pdu.ACCEPTANCE, EXPLICIT),  # our order, not the requestor's
    (("1.2.840.10008.1.2.5", EXPLICIT), MR, pdu.ACCEPTANCE, "1.2.840.10008.1.2.5"),  # RLE kept
    (("1.2.840.10008.1.2.4.50",), MR, pdu.ACCEPTANCE, "1.2.840.10008.1.2.4.50"),  # lossy only
    (("9.9.9",), MR, pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED, None),
    ((EXPLICIT,), VERIFICATION, pdu.ACCEPTANCE, EXPLICIT),
    ((IMPLICIT,), "1.2.3.4.99", pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, None),
])
def test_negotiation_table(syntaxes: tuple[str, ...], abstract: str, result: int,
                           chosen: str | None) -> None:
    answer = negotiate(pdu.ProposedContext(7, abstract, syntaxes))
    assert (answer.context_id, answer.result) == (7, result)
    if chosen is not None:
        assert answer.transfer_syntax == chosen


@pytest.mark.parametrize("size, max_pdu, pdus", [(0, 0, 1), (10, 0, 1), (100, 16, 10),
                                                 (100, 106, 1), (101, 106, 2)])
def test_p_data_fragments_and_joins_back(size: int, max_pdu: int, pdus: int) -> None:
    payload = bytes(range(256))[:size]
    encoded = pdu.p_data(3, payload, command=False, max_pdu_length=max_pdu)
    pieces, position, controls = [], 0, []
    while position < len(encoded):
        (length,) = struct.unpack_from(">I", encoded, position + 2)
        body = encoded[position + 6:position + 6 + length]
        independent = PynetdicomPData()
        independent.decode(encoded[position:position + 6 + length])
        assert independent.presentation_data_value_items[0].presentation_context_id == 3
        for context_id, control, fragment in pdu.pdvs(body):
            assert context_id == 3
            controls.append(control)
            pieces.append(bytes(fragment))
        position += 6 + length
    assert b"".join(pieces) == payload and len(controls) == pdus
    assert controls[-1] == 0x02 and all(c == 0x00 for c in controls[:-1])


def _command(field: int, message_id: int, data_set: bool, sop_instance: str = "") -> bytes:
    elements = [
        (dimse.AFFECTED_SOP_CLASS, dimse.encode_uid(MR)),
        (dimse.COMMAND_FIELD, struct.pack("<H", field)),
        (dimse.MESSAGE_ID, struct.pack("<H", message_id)),
        (dimse.DATA_SET_TYPE, struct.pack("<H", 0x0000 if data_set else dimse.NO_DATA_SET)),
    ]
    if sop_instance:
        elements.append((dimse.AFFECTED_SOP_INSTANCE, dimse.encode_uid(sop_instance)))
    return b"".join(struct.pack("<HHI", t >> 16, t & 0xFFFF, len(v)) + v for t, v in elements)


def test_c_store_response_answers_its_request() -> None:
    request = dimse.Command.parse(_command(dimse.C_STORE_RQ, 42, True, "1.2.3.4"))
    assert request.has_data_set and request.uid(dimse.AFFECTED_SOP_INSTANCE) == "1.2.3.4"
    response = dimse.Command.parse(dimse.response(request, Status.OUT_OF_RESOURCES, "disk"))
    assert response.field == dimse.C_STORE_RSP
    assert response.us(dimse.MESSAGE_ID_RESPONDED_TO) == 42
    assert response.us(dimse.STATUS) == 0xA700
    assert response.uid(dimse.AFFECTED_SOP_INSTANCE) == "1.2.3.4"
    assert response.elements[dimse.ERROR_COMMENT].rstrip() == b"disk"


@pytest.mark.parametrize("encoded, detail", [
    (b"\x00\x00\x00\x01", "truncated"),
    (struct.pack("<HHI", 0, 0x0100, 10) + b"\x01\x00", "runs past"),
    (struct.pack("<HHI", 0, 0x0110, 2) + b"\x01\x00", "without Command Field"),
])
def test_malformed_command_sets_are_refused(encoded: bytes, detail: str) -> None:
    with pytest.raises(dimse.CommandError, match=detail):
        dimse.Command.parse(encoded)


def test_message_assembler_hands_on_commands_and_each_data_fragment() -> None:
    """A command once complete; then every data fragment as it arrives (never joined: the
    receiver streams them to disk), the last one marked."""
    assembler = dimse.MessageAssembler({1})
    command = _command(dimse.C_STORE_RQ, 1, True, "1.2.3")
    data = bytes(range(200))

    def pdv(control: int, fragment: bytes) -> bytes:
        return struct.pack(">IBB", len(fragment) + 2, 1, control) + fragment

    assert assembler.feed(pdv(0x01, command[:10])) == []
    (received,) = assembler.feed(pdv(0x03, command[10:]))
    assert isinstance(received, dimse.CommandReceived) and received.context_id == 1
    assert received.command.field == dimse.C_STORE_RQ
    first, second = assembler.feed(pdv(0x00, data[:50]) + pdv(0x00, data[50:120]))
    (last,) = assembler.feed(pdv(0x02, data[120:]))
    assert [f.last for f in (first, second, last)] == [False, False, True]
    assert b"".join(bytes(f.data) for f in (first, second, last)) == data
    echo = _command(dimse.C_ECHO_RQ, 2, False)
    (received,) = assembler.feed(pdv(0x03, echo))
    assert received.command.field == dimse.C_ECHO_RQ and not received.command.has_data_set


def test_a_command_set_larger_than_any_command_is_refused() -> None:
    assembler = dimse.MessageAssembler({1})
    piece = struct.pack(">IBB", 60_002, 1, 0x01) + bytes(60_000)
    assembler.feed(piece)
    with pytest.raises(pdu.ProtocolError, match="command set over"):
        assembler.feed(piece)


@pytest.mark.parametrize("pdvs, detail", [
    ([(3, 0x03, "echo")], "not accepted"),
    ([(1, 0x02, "data")], "without its command"),
    ([(1, 0x03, "store"), (1, 0x03, "echo")], "before the previous data set ended"),
])
def test_message_assembler_refuses_out_of_order_fragments(pdvs: list[tuple[int, int, str]],
                                                          detail: str) -> None:
    payloads = {"echo": _command(dimse.C_ECHO_RQ, 1, False),
                "store": _command(dimse.C_STORE_RQ, 1, True), "data": b"\x00" * 8}
    body = b"".join(struct.pack(">IBB", len(payloads[p]) + 2, c, control) + payloads[p]
                    for c, control, p in pdvs)
    with pytest.raises(pdu.ProtocolError, match=detail):
        dimse.MessageAssembler({1}).feed(body)


@pytest.mark.parametrize("code, expected, is_kept, passes", [
    (0x0000, Category.SUCCESS, True, False),
    (0x0107, Category.WARNING, True, False),
    (0xB000, Category.WARNING, True, False),
    (0xB007, Category.WARNING, True, False),
    (0x0110, Category.FAILURE, False, True),
    (0xA700, Category.FAILURE, False, True),
    (0xA7FF, Category.FAILURE, False, True),
    (0xA900, Category.FAILURE, False, False),
    (0xC123, Category.FAILURE, False, False),
    (0x0122, Category.FAILURE, False, False),
    (0xFE00, Category.CANCEL, False, False),
    (0xFF00, Category.PENDING, False, False),
])
def test_status_categories(code: int, expected: Category, is_kept: bool, passes: bool) -> None:
    assert category(code) is expected
    assert kept(code) is is_kept and may_pass(code) is passes


def test_status_names_in_reasons() -> None:
    assert Status.OUT_OF_RESOURCES.category is Category.FAILURE
    assert describe(0xA700) == "0xA700 (OUT_OF_RESOURCES)" and describe(0xA712) == "0xA712"


def test_one_status_table_words_statuses_as_ps34_does() -> None:
    """The console's words for a delivery's status come from net/ul/status.py, the table the
    receiver answers from (no second table beside it)."""
    from marrownode.net.ul.status import in_words

    assert in_words(0x0000) == "0x0000 Success"
    assert in_words(0xA7F0) == "0xA7F0 Failure: Refused: Out of Resources"
    assert in_words(0xB000) == "0xB000 Warning: Coercion of Data Elements"
    assert in_words(0xC00F) == "0xC00F Failure: Cannot Understand"
    assert in_words(None) == ""
