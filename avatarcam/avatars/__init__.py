"""The avatar library: photos found, framed and cached once, ready for every engine."""
