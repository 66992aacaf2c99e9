"""HOW pages are fetched, for any API: the HTTP client, the walk engine and its paginators,
frames, shared budgets."""
