"""Network code (e.g. models/fomm/)."""
