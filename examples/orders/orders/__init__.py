"""Orders: placing one writes the order and the message that invoices it, in one transaction."""
