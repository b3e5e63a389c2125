"""The `pneumoscan` command line."""
