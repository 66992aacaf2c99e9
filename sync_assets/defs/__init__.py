"""The code location's definitions, one module per API plus the shared platform, loaded by `dg`
(its `ComponentTree`, see `sync_assets/definitions.py`). Adding an API: its folder under
`apis/` and a module here calling `api_definitions`. Nothing imports this package."""
