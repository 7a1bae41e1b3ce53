"""`swarm chaos`: a fault-injection harness for a loopback swarm. See cli.py, harness.py, faults.py."""
