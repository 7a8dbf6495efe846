"""marrownode's DICOM upper layer for receiving: PDUs, DIMSE command sets, presentation-context
negotiation, Part 10 packaging, the identity walk and DIMSE statuses.

Self-contained: it imports nothing from store/ or config, so it can be tested (and fuzzed) on
bytes alone; net/receiver.py runs it on sockets and hands each instance to an injected store.
"""
