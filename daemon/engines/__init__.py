"""Speech-to-text backends behind one small interface (see base.py)."""
