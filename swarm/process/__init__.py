"""Processes: the engine's event-loop thread, and the watchdog that ends every child (p2pd) with its owner."""
