"""`imagepipe`: the command line client of the imagepipe API (upload, follow, status, download)."""
