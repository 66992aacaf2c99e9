"""IRIS CRM (Ireland Pay, and any tenant of IRIS CRM): spec, datasets and sandbox."""
