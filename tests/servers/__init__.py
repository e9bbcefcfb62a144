"""Real servers the tests need (Debian packages), started on free loopback ports in a temp dir and stopped after."""
