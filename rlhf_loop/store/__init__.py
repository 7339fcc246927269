"""SQLite persistence: schema, connections and the operations the pages and the worker share."""
