"""Local fakes of external services (real servers on 127.0.0.1, port 0)."""
