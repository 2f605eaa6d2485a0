"""HTTP routes: server-rendered pages (`pages`) and the JSON API under /api/ (`api`)."""
