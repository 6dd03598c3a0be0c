"""CPU runtime settings and speed work. `threads`: OpenMP thread count and wait policy, set before
the runtime loads (see its docstring)."""
