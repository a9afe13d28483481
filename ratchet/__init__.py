"""agentroom protocol core: sans-I/O, PyNaCl only."""
