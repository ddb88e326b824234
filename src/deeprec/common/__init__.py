"""Small shared parts used by every service."""
