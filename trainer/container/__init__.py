"""The container side of a job: its environment contract, heartbeat, and self-destruction."""
