"""`explain source-ip`: which address the server's app sees, why, and the fix."""
