"""docker-cilium: a Cilium-style networking and security agent for Docker."""

__version__ = "0.1.0"
