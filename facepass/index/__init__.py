"""The local index: pgvector store, its migrations, the group-commit writer, audit and search."""
