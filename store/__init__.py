"""The store: SQLModel tables, engine and sessions, rollups and read queries."""
