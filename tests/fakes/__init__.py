"""Offline stand-ins for the network services the runner talks to (Vast.ai)."""
