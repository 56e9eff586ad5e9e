"""The avatar library."""
