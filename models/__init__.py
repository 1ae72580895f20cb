"""Stateless models: init(key, **cfg) -> (params, state); apply(params, state, x, *, train)."""
