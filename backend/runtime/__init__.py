"""The process rsvl runs in: host-process set-up (host), device choice (device), cancellable jobs (jobs), the
dependency check (dependencies) and the package installer (installer)."""
