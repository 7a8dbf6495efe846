"""Follow-up: the patient's earlier study found (the same `process` run, the node's index, or
the node's own SR in the PACS), reduced to what a comparison needs, and compared per level
(docs/follow-up.md)."""
