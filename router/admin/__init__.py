"""The admin API and the status page, on their own listener."""
