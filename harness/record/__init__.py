"""The results record (harness.record.schema): the floor beneath measuring, which writes it, and
reporting, which reads it. No torch, no pytest."""
