"""`swarm chaos`: a fault-injection harness for a loopback swarm (issue 5). See cli.py, harness.py, faults.py."""
