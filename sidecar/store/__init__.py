"""Device token storage: SQLite (embedded default) and Apache Cassandra."""
