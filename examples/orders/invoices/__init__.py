"""Invoices: the consumer side, an invoice per order message, applied exactly once."""
