"""The services that run beside the receiver in `serve`, one module each: the assembler
(completion and analysis jobs), the analysis worker process, the deliverer (outbox to
destinations) and retention. node.py wires them together."""
