"""The rsvl Explore panel: ask the map in words or by example (see panel.py, session.py)."""
