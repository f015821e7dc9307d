"""Device kernels of in-tree implementations: imported by them, never by discovery (their toolkits are optional)."""
