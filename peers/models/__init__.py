"""Model architectures written in plain torch (ResNets for the vision tasks)."""
