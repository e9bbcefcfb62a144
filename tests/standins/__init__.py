"""Loopback stand-ins for services the tests cannot reach (provider APIs), written from their published shapes."""
