"""Beyond one node: which rank this process is, the collective check over torch.distributed, launcher timeouts."""
